"""Inverted dropout: statistics, scaling, and the rule g * mask / (1 - rate)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import ops
from fcnn import reference as R
from fcnn.testing import assert_close, check_vjp
from tests.strategies import normal


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_matches_reference_with_the_same_key(key, rate):
    x = normal(0, (3, 5, 5, 2))
    check_vjp(lambda x: ops.dropout(key, x, rate), lambda x: R.dropout(key, x, rate), x)


def test_drop_fraction_and_scale(key):
    x = jnp.ones((200_000,), jnp.float32)
    y = ops.dropout(key, x, 0.3)
    kept = np.asarray(y != 0)
    assert abs(kept.mean() - 0.7) < 0.005  # 0.7 +- ~5 sigma
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)
    assert abs(float(jnp.mean(y)) - 1.0) < 0.01  # inverted: expectation preserved


def test_gradient_is_mask_over_keep_probability(key):
    x = normal(1, (1000,))
    y, vjp = jax.vjp(lambda x: ops.dropout(key, x, 0.25), x)
    g = normal(2, (1000,))
    np.testing.assert_allclose(vjp(g)[0], jnp.where(y != 0, g / 0.75, 0.0))


def test_rate_zero_is_identity_and_keys_differ(key):
    x = normal(3, (50,))
    assert ops.dropout(key, x, 0.0) is x
    a = ops.dropout(jax.random.key(1), x, 0.5)
    b = ops.dropout(jax.random.key(2), x, 0.5)
    assert not np.array_equal(a, b)


def test_vmap_over_keys_and_jit(key):
    x = normal(4, (8, 16))
    keys = jax.random.split(key, 8)
    per = jax.vmap(lambda k, xi: ops.dropout(k, xi, 0.5))(keys, x)
    loop = jnp.stack([ops.dropout(k, xi, 0.5) for k, xi in zip(keys, x, strict=True)])
    np.testing.assert_array_equal(per, loop)
    np.testing.assert_array_equal(jax.jit(lambda k, x: ops.dropout(k, x, 0.5))(key, x),
                                  ops.dropout(key, x, 0.5))


@pytest.mark.skipif(ops.binding() != "primitive", reason="forward mode: the primitive binding")
def test_forward_mode_is_the_mask_over_the_keep_probability(key):
    x, t = normal(0, (3, 7)), normal(1, (3, 7))
    y, dy = jax.jvp(lambda x: ops.dropout(key, x, 0.3), (x,), (t,))
    want = jax.jvp(lambda x: R.dropout(key, x, 0.3), (x,), (t,))
    assert_close(y, want[0], "value")
    assert_close(dy, want[1], "jvp")
