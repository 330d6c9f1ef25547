"""dense: x @ w + b with dX = g W^T, dW = X^T g, db = sum g."""

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

# forward and reverse where the binding has forward mode (the default), else reverse only
MODES = ["fwd", "rev"] if ops.binding() == "primitive" else ["rev"]


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    fin=st.integers(1, 6),
    fout=st.integers(1, 6),
    bias=st.booleans(),
)
def test_value_and_vjp_match_autodiff(lead, fin, fout, bias, dtype):
    x = normal(0, (*lead, fin), dtype)
    w = normal(1, (fin, fout), dtype)
    args = (x, w, normal(2, (fout,), dtype)) if bias else (x, w)
    check_vjp(ops.dense, R.dense, *args)


def test_by_hand_and_finite_differences():
    x = jnp.array([[1.0, 2.0]])
    w = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]])
    b = jnp.array([0.5, 0.0, -1.0])
    np.testing.assert_array_equal(ops.dense(x, w, b), [[1.5, 2.0, 7.0]])
    g = jnp.array([[1.0, 2.0, 3.0]])
    _, vjp = jax.vjp(ops.dense, x, w, b)
    dx, dw, db = vjp(g)
    np.testing.assert_array_equal(dx, g @ w.T)
    np.testing.assert_array_equal(dw, x.T @ g)
    np.testing.assert_array_equal(db, g[0])
    check_grads(ops.dense, (normal(0, (3, 4)), normal(1, (4, 2)), normal(2, (2,))), order=2,
                modes=MODES)


def test_grad_of_grad_and_vmap():
    x, w, b = normal(0, (5, 4)), normal(1, (4, 3)), normal(2, (3,))

    def second(f):
        inner = lambda x, w, b: jnp.sum(jnp.tanh(f(x, w, b)) ** 2)
        outer = lambda x, w, b: sum(jnp.sum(jnp.sin(g)) for g in
                                    jax.grad(inner, argnums=(0, 1, 2))(x, w, b))
        return jax.grad(outer, argnums=(0, 1, 2))(x, w, b)

    for got, want in zip(second(ops.dense), second(R.dense), strict=True):
        assert_close(got, want, "d2")
    per_example = jax.vmap(jax.grad(lambda w, x: jnp.sum(ops.dense(x, w) ** 2)), (None, 0))(w, x)
    loop = jnp.stack([jax.grad(lambda w: jnp.sum(R.dense(xi, w) ** 2))(w) for xi in x])
    assert_close(per_example, loop, "per-example")
