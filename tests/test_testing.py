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


def test_nan_in_the_same_places_passes_and_any_other_non_finite_mismatch_fails():
    nan, inf = jnp.nan, jnp.inf
    assert_close(jnp.array([1.0, nan, inf, -inf]), jnp.array([1.0, nan, inf, -inf]), "same")
    for got, want in [(nan, 2.0), (2.0, nan), (nan, inf), (inf, nan), (inf, -inf), (-inf, inf),
                      (inf, 2.0)]:
        with pytest.raises(AssertionError, match=r"non-finite values differ, first at index \(1,"):
            assert_close(jnp.array([1.0, got, 0.0]), jnp.array([1.0, want, 0.0]), "x")


def _wrong_second_gradient(f):
    """`f` with the gradient of its second input scaled by 1.01."""
    bad = jax.custom_vjp(f)
    bad.defvjp(lambda a, b: (f(a, b), (a, b)),
               lambda res, g: tuple(d * s for d, s in zip(jax.vjp(f, *res)[1](g), (1.0, 1.01),
                                                          strict=True)))
    return bad


def test_pytree_arguments_are_differentiated_and_named_by_path():
    f = lambda a, b: jnp.sin(a) * b
    bad = _wrong_second_gradient(f)
    x, y = normal(0, (3,)), normal(1, (3,))
    check_vjp(lambda xs: f(xs[0], xs[1]), lambda xs: f(xs[0], xs[1]), [x, y])
    with pytest.raises(AssertionError, match=r"gradient of argument 0 \(`xs`\)\[1\]: worst"):
        check_vjp(lambda xs: bad(xs[0], xs[1]), lambda xs: f(xs[0], xs[1]), [x, y])
    with pytest.raises(AssertionError, match=r"gradient of argument 0 \(`p`\)\['w'\]: worst"):
        check_vjp(lambda p, n: bad(p["b"], p["w"])[:n], lambda p, n: f(p["b"], p["w"])[:n],
                  {"w": y, "b": x}, 2)


def test_a_python_float_is_refused_with_its_name():
    x = normal(0, (3,))
    with pytest.raises(TypeError, match=r"argument 1 \(`slope`\) is a Python float \(0\.1\)"):
        check_vjp(lambda x, slope: ops.leaky_relu(x, slope),
                  lambda x, slope: R.leaky_relu(x, slope), x, 0.1)
    with pytest.raises(TypeError, match=r"argument 0 \(`xs`\)\[1\] is a Python float"):
        check_vjp(lambda xs: xs[0] * xs[1], lambda xs: xs[0] * xs[1], [x, 2.0])
    # the two ways out the message names: an array is differentiated, a bound float held fixed
    check_vjp(lambda x, s: ops.relu(x) * s, lambda x, s: R.relu(x) * s, x, jnp.asarray(0.1))
    check_vjp(lambda x: ops.leaky_relu(x, 0.1), lambda x: R.leaky_relu(x, 0.1), x)
