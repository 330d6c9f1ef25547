"""local_response_norm: the hand-written rule against autodiff of the plain formula."""

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
@given(size=st.integers(1, 6), c=st.integers(1, 9), batched=st.booleans(),
       alpha=st.sampled_from([1e-4, 0.1, 1.0]), beta=st.sampled_from([0.5, 0.75]),
       k=st.sampled_from([1.0, 2.0]))
def test_value_and_vjp(size, c, batched, alpha, beta, k, dtype):
    x = 3 * normal(c, (2, 3, 4, c) if batched else (3, 4, c), dtype)
    f = lambda x: ops.local_response_norm(x, size, alpha, beta, k)
    check_vjp(f, lambda x: R.local_response_norm(x, size, alpha, beta, k), x)


def test_by_hand_and_higher_order():
    # one pixel, 3 channels, size 3, alpha 1, beta 1, k 1: d_c = 1 + sum of squares in window
    x = jnp.array([1.0, 2.0, 3.0])
    want = x / (1 + jnp.array([1 + 4, 1 + 4 + 9, 4 + 9]))
    np.testing.assert_allclose(ops.local_response_norm(x, 3, 1.0, 1.0, 1.0), want)
    x = normal(0, (2, 2, 2, 5))
    f = lambda x: ops.local_response_norm(x, 5, 0.5, 0.75, 2.0)
    check_grads(f, (x,), order=2, modes=MODES)

    def second(fn):
        return jax.grad(lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(fn(x) ** 2))(x) ** 2))(x)

    assert_close(second(f), second(lambda x: R.local_response_norm(x, 5, 0.5, 0.75, 2.0)), "d2")


def test_errors():
    with pytest.raises(ValueError, match=r"local_response_norm: `size` must be an int >= 1, got 0"):
        ops.local_response_norm(jnp.ones((2, 3)), 0)


@pytest.mark.skipif(ops.binding() != "primitive", reason="forward mode: the primitive binding")
def test_forward_mode():
    """The written JVP (dx d^-beta - beta x d^(-beta-1) dd) and the Hessian of a scalar equal
    the oracle's; reverse mode, its transpose, still equals the written VJP's values."""
    x, t = normal(0, (2, 3, 3, 7)), normal(1, (2, 3, 3, 7))
    kw = dict(size=3, alpha=0.3, beta=0.6, k=1.5)
    ours = jax.jvp(lambda x: ops.local_response_norm(x, **kw), (x,), (t,))
    want = jax.jvp(lambda x: R.local_response_norm(x, **kw), (x,), (t,))
    assert_close(ours[1], want[1], "jvp")

    def scalar(mod):
        return lambda x: jnp.sum(jnp.sin(mod.local_response_norm(x, **kw)))

    assert_close(jax.hessian(scalar(ops))(x[:1, :2, :2]), jax.hessian(scalar(R))(x[:1, :2, :2]),
                 "hessian")
