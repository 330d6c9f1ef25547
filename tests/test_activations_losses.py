"""Activations and losses: value and VJP against autodiff of the plain formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from fcnn import ops
from fcnn import reference as R
from fcnn.testing import assert_close, check_vjp
from tests.strategies import normal

ACTIVATIONS = [
    ("relu", {}), ("leaky_relu", {}), ("leaky_relu", {"negative_slope": 0.1}), ("elu", {}),
    ("elu", {"alpha": 0.5}), ("sigmoid", {}), ("tanh", {}),
]
shapes = st.lists(st.integers(1, 5), min_size=0, max_size=4)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("name,kw", ACTIVATIONS)
@given(shape=shapes)
def test_activation_value_and_vjp(name, kw, shape, dtype):
    x = 3 * normal(0, shape, dtype)
    check_vjp(lambda x: getattr(ops, name)(x, **kw), lambda x: getattr(R, name)(x, **kw), x)


@pytest.mark.parametrize("name,kw", ACTIVATIONS)
def test_activation_second_derivative(name, kw):
    x = 2 * normal(1, (4, 5))
    x = jnp.where(jnp.abs(x) < 1e-3, 0.5, x)  # keep away from the kink for FD

    def second(mod):
        f = lambda x: jnp.sum(jnp.sin(getattr(mod, name)(x, **kw)))
        return jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(x)

    assert_close(second(ops), second(R), "d2")
    modes = ["fwd", "rev"] if ops.binding() == "primitive" else ["rev"]
    check_grads(lambda x: getattr(ops, name)(x, **kw), (x,), order=2, modes=modes)


@pytest.mark.skipif(ops.binding() != "primitive", reason="forward mode: the primitive binding")
@pytest.mark.parametrize("name,kw", ACTIVATIONS)
def test_activation_forward_mode(name, kw):
    """jvp, linearize, and the Hessian of a scalar (jacfwd of jacrev) equal the oracle's."""
    x, t = 2 * normal(1, (3, 4)), normal(2, (3, 4))

    def scalar(mod):
        return lambda x: jnp.sum(jnp.sin(getattr(mod, name)(x, **kw)))

    ours = jax.jvp(lambda x: getattr(ops, name)(x, **kw), (x,), (t,))
    want = jax.jvp(lambda x: getattr(R, name)(x, **kw), (x,), (t,))
    assert_close(ours[0], want[0], "value")
    assert_close(ours[1], want[1], "jvp")
    assert_close(jax.linearize(lambda x: getattr(ops, name)(x, **kw), x)[1](t), want[1],
                 "linearize")
    assert_close(jax.hessian(scalar(ops))(x), jax.hessian(scalar(R))(x), "hessian")


def test_subgradients_at_zero():
    z = jnp.zeros(3)
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(ops.relu(x)))(z), 0.0)
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(ops.leaky_relu(x, 0.1)))(z), 0.1)


def test_sigmoid_is_stable_at_extremes():
    x = jnp.array([-1000.0, 0.0, 1000.0])
    np.testing.assert_array_equal(ops.sigmoid(x), [0.0, 0.5, 1.0])
    g = jax.grad(lambda x: jnp.sum(ops.sigmoid(x)))(x)
    np.testing.assert_array_equal(g, [0.0, 0.25, 0.0])


def _labels(seed, shape, k):
    return jnp.asarray(np.random.default_rng(seed).integers(0, k, shape), jnp.int32)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("name", ["softmax_cross_entropy", "hinge"])
@given(n=st.integers(1, 6), k=st.integers(2, 7), batched=st.booleans())
def test_classification_losses(name, n, k, batched, dtype):
    shape = (n, k) if batched else (k,)
    z = 3 * normal(n * k, shape, dtype)
    y = _labels(n, shape[:-1], k)
    check_vjp(getattr(ops, name), getattr(R, name), z, y)


@given(n=st.integers(1, 6), k=st.integers(2, 7))
def test_soft_label_cross_entropy(n, k):
    z = normal(0, (n, k))
    e = np.exp(np.asarray(normal(1, (n, k))))
    t = jnp.asarray(e / e.sum(axis=-1, keepdims=True))  # numpy: no compile per shape
    check_vjp(ops.softmax_cross_entropy, R.softmax_cross_entropy, z, t)


@given(shape=shapes)
def test_mse(shape):
    check_vjp(ops.mse, R.mse, normal(0, shape), normal(1, shape))


def test_cross_entropy_gradient_is_p_minus_y_over_n_and_stable():
    z = jnp.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    y = jnp.array([0, 2])
    loss, g = jax.value_and_grad(ops.softmax_cross_entropy)(z, y)
    np.testing.assert_allclose(loss, np.log(3.0) / 2)
    want = (jax.nn.softmax(z) - jax.nn.one_hot(y, 3)) / 2
    np.testing.assert_allclose(g, want, atol=1e-15)


def test_hinge_by_hand():
    # CS231n example: scores (3.2, 5.1, -1.7), label 0: max(0, 5.1-3.2+1) + max(0, -1.7-3.2+1)
    s = jnp.array([[3.2, 5.1, -1.7]])
    np.testing.assert_allclose(ops.hinge(s, jnp.array([0])), 2.9)
    np.testing.assert_allclose(jax.grad(ops.hinge)(s, jnp.array([0])), [[-1.0, 1.0, 0.0]])


def test_losses_second_order():
    z, y = normal(0, (4, 5)), _labels(0, (4,), 5)

    def second(mod):
        f = lambda z: mod.softmax_cross_entropy(z, y) + mod.mse(z, 0.5 * z + 1)
        return jax.grad(lambda z: jnp.sum(jax.grad(f)(z) ** 3))(z)

    assert_close(second(ops), second(R), "d2")


@pytest.mark.skipif(ops.binding() != "primitive", reason="forward mode: the primitive binding")
def test_losses_forward_mode():
    """Each loss's jvp (its gradient's inner product with the tangent) and Hessian (jacfwd of
    jacrev) equal the oracle's; soft labels are differentiated too."""
    z, y, t = normal(0, (4, 5)), _labels(0, (4,), 5), normal(1, (4, 5))
    soft = jax.nn.softmax(normal(2, (4, 5)))
    cases = {
        "softmax_cross_entropy": lambda mod: lambda z: mod.softmax_cross_entropy(z, y),
        "soft labels": lambda mod: lambda z: mod.softmax_cross_entropy(z, soft * z ** 2),
        "mse": lambda mod: lambda z: mod.mse(z, 0.5 * z ** 2 + 1),
        "hinge": lambda mod: lambda z: mod.hinge(z, y, 0.7),
    }
    for name, loss in cases.items():
        assert_close(jax.jvp(loss(ops), (z,), (t,))[1], jax.jvp(loss(R), (z,), (t,))[1],
                     f"{name} jvp")
        assert_close(jax.hessian(loss(ops))(z), jax.hessian(loss(R))(z), f"{name} hessian")
