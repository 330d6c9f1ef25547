"""Suite-wide settings: float64 available, strict rank promotion, exact float32 matmuls."""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# float32 comparisons are unreliable when a matmul or conv may run at reduced precision.
jax.config.update("jax_default_matmul_precision", "highest")

# Bounded, reproducible sweeps for CI; HYPOTHESIS_PROFILE=thorough explores further.
settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def key():
    return jax.random.key(0)
