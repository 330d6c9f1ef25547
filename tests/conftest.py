"""Suite-wide settings: float64 available, strict rank promotion, exact float32 matmuls, XLA:CPU
compiling at LLVM optimisation level 0, convolution algorithms by the built-in table."""

import os
import shutil
import tempfile

# Most of the suite's time is XLA compiling small programs (fresh ones per hypothesis example,
# per op and transformation), not running them. LLVM's optimisation level 0 builds them much
# faster: 760 tests in 11m18s at the default level, 7m29s at 0, on 2 Intel AVX-512 cores. The
# programs (their HLO) are the same, and the heavy kernels are library calls either way (2
# epochs of the main job: 11.7 s at the default level, 11.5 s at 0, the same 94.66%); the
# generated loops round differently in the last bits, as another CPU's kernels do, which the
# training tests' measured margins allow for. Set here, before jax starts a backend, for the
# xdist workers and the scripts the tests run as subprocesses; a level in XLA_FLAGS wins.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

# "auto" resolves by the built-in table, not by measuring this machine (fcnn.tuning): the suite's
# programs are the same on every machine and no test writes the user's cache. The tuning tests
# measure in temporary caches of their own.
os.environ.setdefault("FCNN_CONV_TUNING", "table")

import jax  # noqa: E402
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# float32 comparisons are unreliable when a matmul or conv may run at reduced precision.
jax.config.update("jax_default_matmul_precision", "highest")

# Bounded, reproducible sweeps for CI; HYPOTHESIS_PROFILE=thorough explores further.
settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def key():
    return jax.random.key(0)


def pytest_configure(config):
    """Many tests compile the same programs (a LeNet-5 train step in a dozen of them): the
    xdist workers of one run, and the scripts the tests start as subprocesses, share a
    persistent compilation cache in a fresh directory, which the controller removes at the end
    (the suite: 9m01s -> 7m55s on 2 cores)."""
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers
        config._fcnn_cache = tempfile.mkdtemp(prefix="fcnn-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._fcnn_cache
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
    if getattr(config, "_fcnn_cache", None):
        shutil.rmtree(config._fcnn_cache, ignore_errors=True)
