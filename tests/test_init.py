"""Initialisers: fans for dense and HWIO (+groups) weights, and the variance of large draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import init


def test_fans():
    assert init.fans((300, 100)) == (300.0, 100.0)
    assert init.fans((3, 3, 16, 32)) == (144.0, 288.0)
    # depthwise-ish: groups=4, kernel (3, 3, 4, 16): each output sums 3*3*4 inputs,
    # each input feeds 3*3*16/4 outputs
    assert init.fans((3, 3, 4, 16), groups=4) == (36.0, 36.0)
    assert init.fans((7,)) == (7.0, 7.0)


@pytest.mark.parametrize(
    "make,shape,groups,var",
    [
        (init.he_normal, (3, 3, 64, 128), 1, 2 / (9 * 64)),
        (init.he_normal, (784, 256), 1, 2 / 784),
        (init.glorot_uniform, (5, 5, 16, 64), 1, 2 / (25 * 16 + 25 * 64)),
        (init.glorot_normal, (400, 120), 1, 2 / (400 + 120)),
        (init.glorot_normal, (3, 3, 8, 32), 4, 2 / (9 * 8 + 9 * 32 / 4)),
    ],
)
def test_variance_of_large_draws(make, shape, groups, var):
    w = make()(jax.random.key(1), shape, jnp.float32, groups=groups)
    assert w.shape == shape and w.dtype == jnp.float32
    n = w.size
    # sample variance of n draws has relative std sqrt(2/(n-1)) (normal) or less (uniform)
    assert abs(float(jnp.var(w)) / var - 1) < 5 * np.sqrt(2 / (n - 1))
    assert abs(float(jnp.mean(w))) < 5 * np.sqrt(var / n)


def test_uniform_bound_normal_std_constant_zeros():
    w = init.glorot_uniform()(jax.random.key(0), (100, 50))
    assert float(jnp.max(jnp.abs(w))) <= np.sqrt(6 / 150)
    w = init.normal(0.05)(jax.random.key(0), (200, 200))
    assert abs(float(jnp.std(w)) - 0.05) < 0.001
    np.testing.assert_array_equal(init.constant(0.1)(None, (3,)), jnp.full(3, 0.1, jnp.float32))
    np.testing.assert_array_equal(init.zeros()(None, (2, 2)), jnp.zeros((2, 2)))
