"""fcnn.testing.check_vjp catches wrong rules and says where."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from fcnn import ops
from fcnn import reference as R
from fcnn.testing import assert_close, check_vjp, tolerance
from tests.strategies import normal


def _with_bwd(fwd, bwd):
    f = jax.custom_vjp(fwd)
    f.defvjp(lambda *a: (fwd(*a), a), bwd)
    return f


def test_passes_on_a_correct_rule():
    check_vjp(ops.conv2d, R.conv2d, normal(0, (2, 5, 5, 3)), normal(1, (3, 3, 3, 2)))


def test_catches_a_missing_kernel_flip_and_names_the_argument():
    """dX without the 180-degree rotation: invisible to an all-ones cotangent on a symmetric
    case, caught by check_vjp's random cotangent."""
    conv = lambda x, w: R.conv2d(x, w, padding=1)

    def bad_bwd(res, g):
        x, w = res
        dx = R.conv2d(g, jnp.swapaxes(w, 2, 3), padding=1)  # correlates with the unflipped kernel
        return dx, R.conv2d_grad_kernel(x, g, w.shape, padding=1)

    bad = _with_bwd(conv, bad_bwd)
    x, w = normal(0, (1, 5, 5, 2)), normal(1, (3, 3, 2, 2))
    with pytest.raises(AssertionError, match=r"gradient of argument 0 \(`x`\): worst element"):
        check_vjp(bad, conv, x, w)


def test_catches_a_wrong_forward_value():
    with pytest.raises(AssertionError, match=r"^output: worst element at index"):
        check_vjp(lambda x: ops.relu(x) * (1 + 1e-6), R.relu, normal(0, (10,)))


def test_catches_wrong_cotangent_dtype():
    bad = _with_bwd(lambda x: x * 2, lambda res, g: ((2 * g).astype(jnp.float32),))
    with pytest.raises(AssertionError, match="does not match the primal"):
        check_vjp(bad, lambda x: x * 2, normal(0, (3,)))


def test_integer_arguments_are_held_fixed():
    check_vjp(ops.softmax_cross_entropy, R.softmax_cross_entropy, normal(0, (3, 4)),
              jnp.array([0, 3, 1]))


def test_tolerances_per_dtype_and_overrides():
    assert tolerance(jnp.float64) == (1e-10, 1e-12)
    assert tolerance(jnp.float32) == (1e-5, 1e-6)
    assert tolerance(jnp.float32, rtol=1e-3) == (1e-3, 1e-6)
    assert_close(jnp.array([1.0, 1.0 + 1e-7], jnp.float32), jnp.array([1.0, 1.0], jnp.float32),
                 "near")
    with pytest.raises(AssertionError, match="dtype"):
        assert_close(jnp.ones(2, jnp.float32), jnp.ones(2), "x")
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(jnp.array([1.0, jnp.nan]), jnp.array([1.0, 2.0]), "x")
