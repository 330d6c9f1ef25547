"""Batch norm and group norm: values and rules against the oracle, every transformation through
check_op under both bindings, the statistics' conventions by hand, dtypes and bad input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import ops
from fcnn import reference as R
from fcnn.testing import assert_close, check_op, check_vjp, rule_bindings
from tests.strategies import normal


def _operands(shape, dtype=jnp.float64):
    c = shape[-1]
    x = normal(0, shape, dtype) * 2 + 1  # statistics far from (0, 1)
    return x, normal(1, (c,), dtype) + 1, normal(2, (c,), dtype)


def _stats(dtype=jnp.float64, c=6):
    return normal(3, (c,), dtype), jnp.asarray(np.random.default_rng(4).random(c) + 0.5, dtype)


_GN = functools.partial(ops.group_norm, groups=3)
_GN_REF = functools.partial(R.group_norm, groups=3)
_BN_RELU = functools.partial(ops.batch_norm, activation="relu")
_BN_RELU_REF = functools.partial(R.batch_norm, activation="relu")
def _with_residual(op):
    """op(x, g, b, activation="relu", residual=r) for a fixed r: the end of a basic block."""
    def run(x, g, b):
        r = normal(20, x.shape, x.dtype)
        return op(x, g, b, activation="relu", residual=r)
    return run


CASES = {  # name: (op, oracle, extra operands)
    "batch_norm": (ops.batch_norm, R.batch_norm, False),
    # batch norm with the ReLU after it as one op (fcnn.ops._batch_norm)
    "batch_norm_relu": (lambda x, g, b: _BN_RELU(x, g, b), lambda x, g, b: _BN_RELU_REF(x, g, b),
                        False),
    "batch_norm_add_relu": (_with_residual(ops.batch_norm), _with_residual(R.batch_norm), False),
    "group_norm": (lambda x, g, b: _GN(x, g, b), lambda x, g, b: _GN_REF(x, g, b), False),
    "batch_norm_inference": (ops.batch_norm_inference, R.batch_norm_inference, True),
}


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (7, 6)])  # NHWC and dense features
@pytest.mark.parametrize("name", list(CASES))
def test_value_and_vjp_match_the_oracle(name, shape, dtype):
    """Value and VJP with random cotangents for every output (batch norm's statistics too)."""
    op, oracle, inference = CASES[name]
    args = _operands(shape, dtype) + (_stats(dtype) if inference else ())
    check_vjp(op, oracle, *args)


@pytest.mark.parametrize("name", list(CASES))
def test_every_transformation(name):
    """check_op: JVP, VJP, second order against the oracle and float64 finite differences, the
    adjoint identity, jit and vmap (per example, over the parameters). The custom_vjp binding's
    rules agree with these (tests/test_bindings.py)."""
    op, oracle, inference = CASES[name]
    args = _operands((3, 2, 2, 6), jnp.float32) + (_stats(jnp.float32) if inference else ())
    modes = ("fwd", "rev") if ops.binding() == "primitive" else ("rev",)  # FCNN_BINDING
    check_op(op, *args, reference=oracle, modes=modes)
    assert rule_bindings(op, *args) >= 1


def test_batch_statistics_by_hand():
    """Per channel over N, H, W; the variance biased (divided by M = N*H*W, not M - 1); y has
    zero mean and (with eps) unit variance per channel before gamma and beta."""
    x = jnp.asarray([[1.0, 10.0], [3.0, 10.0], [5.0, 40.0], [7.0, 20.0]]).reshape(2, 2, 1, 2)
    gamma, beta = jnp.asarray([2.0, 1.0]), jnp.asarray([0.5, -1.0])
    y, mean, var = ops.batch_norm(x, gamma, beta, eps=1e-3)
    assert_close(mean, jnp.asarray([4.0, 20.0]), "mean")
    # channel 0: 1, 3, 5, 7 -> (9 + 1 + 1 + 9) / 4; channel 1: 10, 10, 40, 20 -> (100 + 100 +
    # 400 + 0) / 4 (divided by M, not M - 1 = 3)
    assert_close(var, jnp.asarray([5.0, 150.0]), "biased variance")
    xhat = (x[..., 0].ravel() - 4.0) / np.sqrt(5.0 + 1e-3)
    assert_close(y[..., 0].ravel(), 2.0 * xhat + 0.5, "y, channel 0")


def test_group_norm_is_per_example_and_per_group():
    """Each example's statistics are its own (changing example 1 leaves example 0's output
    alone), groups of C / G channels; groups=C is instance norm, groups=1 layer norm."""
    x, gamma, beta = _operands((2, 3, 3, 6))
    y = ops.group_norm(x, gamma, beta, 3)
    y2 = ops.group_norm(x.at[1].multiply(5.0), gamma, beta, 3)
    assert_close(y2[0], y[0], "example 0 untouched by example 1")
    xg = np.asarray(x[0]).reshape(9, 3, 2)  # example 0: (spatial, group, channel in group)
    mean, var = xg.mean(axis=(0, 2)), xg.var(axis=(0, 2))
    want = ((xg - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5)).reshape(3, 3, 6)
    assert_close(y[0], jnp.asarray(want) * gamma.reshape(1, 1, 6) + beta.reshape(1, 1, 6),
                 "group norm by hand")
    ones, zeros = jnp.ones(6), jnp.zeros(6)
    inst = np.asarray(x[0]).reshape(9, 6)
    want_inst = (inst - inst.mean(0)) / np.sqrt(inst.var(0) + 1e-5)
    assert_close(ops.group_norm(x, ones, zeros, 6)[0].reshape(9, 6), jnp.asarray(want_inst),
                 "instance norm")


def test_low_precision_keeps_its_dtype_and_accumulates_in_float32():
    x, gamma, beta = _operands((8, 4, 4, 6), jnp.float32)
    for dtype in (jnp.bfloat16, jnp.float16):
        y, mean, var = ops.batch_norm(x.astype(dtype), gamma, beta)
        assert (y.dtype, mean.dtype, var.dtype) == (dtype, jnp.float32, jnp.float32)
        rounded = R.batch_norm(x.astype(dtype).astype(jnp.float64), gamma.astype(jnp.float64),
                               beta.astype(jnp.float64))
        assert_close(y.astype(jnp.float64), rounded[0].astype(jnp.float64),
                     f"{jnp.dtype(dtype).name} y", rtol=2e-2, atol=1e-2)
        assert_close(mean.astype(jnp.float64), rounded[1], "mean", rtol=1e-5, atol=1e-6)
        grad = jax.grad(lambda x: jnp.sum(ops.batch_norm(x, gamma, beta)[0]))(x.astype(dtype))
        assert grad.dtype == dtype


@pytest.mark.skipif(ops.binding() != "primitive", reason="forward mode: the primitive binding")
def test_hessian_of_a_loss_through_batch_norm():
    x, gamma, beta = _operands((2, 2, 2, 3))

    def loss(op):
        return lambda x: jnp.sum(jnp.tanh(op(x, gamma, beta)[0]) ** 2)

    assert_close(jax.hessian(loss(ops.batch_norm))(x), jax.hessian(loss(R.batch_norm))(x),
                 "Hessian")


# ----------------------------------------------------------------------------- the native kernels


def _native_programs(relu, residual):
    """The float32 op's (y, mean, var) and its VJP for random cotangents of all three, jitted;
    and the float64 oracle's (autodiff of plain lax). With `residual`, r is added before the
    activation (and differentiated)."""
    act = "relu" if relu else None

    def run(op):
        def f(x, g, b, r, u):
            def call(x, g, b, r):
                return op(x, g, b, activation=act, residual=r if residual else None)
            out, vjp = jax.vjp(call, x, g, b, r)
            return out, vjp(u)[:4 if residual else 3]
        return jax.jit(f)

    return run(ops.batch_norm), run(R.batch_norm)


@pytest.mark.parametrize(("relu", "residual"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("shape", [
    (2, 3, 3, 1),  # one channel
    (3, 5, 4, 16),  # one chunk
    (64, 17, 19, 5),  # 103,360 rows of 5 channels: many chunks, split over the threads
    (300, 7),  # features
])
def test_native_kernels_run_and_match_the_oracle(shape, relu, residual):
    """float32 on the CPU with the native kernels: the program holds the forward and backward
    handlers (and no XLA reduction of the normalisation), and y, the statistics and every
    gradient (cotangents on all three outputs; the residual's too) equal the float64 oracle's
    within float32's bounds."""
    if ops.binding() != "primitive":
        pytest.skip("the native kernels run under the primitive binding")
    x, gamma, beta = (a.astype(jnp.float32) for a in _operands(shape))
    u = tuple(normal(10 + i, s, jnp.float32) for i, s in enumerate((shape, shape[-1:],
                                                                  shape[-1:])))
    r = normal(15, shape, jnp.float32)
    mine, oracle = _native_programs(relu, residual)
    hlo = mine.lower(x, gamma, beta, r, u).as_text()
    from fcnn.ops import onednn

    if onednn.AVAILABLE:
        assert "fcnn_batch_norm_fwd" in hlo and "fcnn_batch_norm_bwd" in hlo, hlo[:2000]
    got = jax.tree_util.tree_leaves(mine(x, gamma, beta, r, u))
    want = jax.tree_util.tree_leaves(oracle(*(a.astype(jnp.float64) for a in (x, gamma, beta, r)),
                                            tuple(a.astype(jnp.float64) for a in u)))
    names = ("y", "mean", "var", "dx", "dgamma", "dbeta", "dresidual")[:len(want)]
    for name, g, w in zip(names, got, want, strict=True):
        assert g.dtype == jnp.float32, name
        assert_close(g.astype(jnp.float64), w, f"{name} of {shape}, relu={relu}, "
                     f"residual={residual}", rtol=2e-5,
                     atol=2e-5 * max(1.0, float(jnp.max(jnp.abs(w)))))


def test_native_statistics_are_exact_far_from_zero():
    """Values around 1e4 with unit spread: the native kernels sum in double (each chunk about
    its own mean), so the variance is float32's rounding of the exact one, where a float32
    E[x^2] - E[x]^2 would lose every digit."""
    x = (1e4 + normal(0, (64, 9, 9, 3))).astype(jnp.float32)
    _, mean, var = jax.jit(ops.batch_norm)(x, jnp.ones(3, jnp.float32), jnp.zeros(3, jnp.float32))
    exact = np.asarray(x, np.float64).reshape(-1, 3)
    assert_close(mean.astype(jnp.float64), exact.mean(0), "mean", rtol=1e-7, atol=0)
    assert_close(var.astype(jnp.float64), exact.var(0), "var", rtol=1e-5, atol=0)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda x, g, b: ops.batch_norm(x[0, 0, 0], g, b), ValueError,
     r"batch_norm: `x` must have a batch axis and a channel axis, \(N, ..., C\); got shape "
     r"\(6,\)."),
    (lambda x, g, b: ops.batch_norm(x, g[:5], b), ValueError,
     r"batch_norm: `gamma` must have shape \(6,\) \(one per channel of x\), got \(5,\)."),
    (lambda x, g, b: ops.batch_norm(x, g, b, eps=0.0), ValueError, r"batch_norm: `eps`"),
    (lambda x, g, b: ops.batch_norm(x, g, b, residual=x[:1]), ValueError,
     r"batch_norm: `residual` must have x's shape \(2, 3, 3, 6\), got \(1, 3, 3, 6\)."),
    (lambda x, g, b: ops.batch_norm(x, g, b, residual=x.astype(jnp.int32)), TypeError,
     r"batch_norm: `residual` must be a floating-point array, got dtype int32"),
    (lambda x, g, b: ops.batch_norm(x, g, b, activation="tanh"), ValueError,
     r"batch_norm: `activation` must be one of \(None, 'relu'\), got 'tanh'."),
    (lambda x, g, b: ops.batch_norm(x.astype(jnp.int32), g, b), TypeError,
     r"batch_norm: `x` must be a floating-point array, got dtype int32"),
    (lambda x, g, b: ops.group_norm(x, g, b, 4), ValueError,
     r"group_norm: `groups` \(4\) must divide the 6 channels of x."),
    (lambda x, g, b: ops.batch_norm_inference(x, g, b, g, b[:2]), ValueError,
     r"batch_norm_inference: `var` must have shape \(6,\)"),
])
def test_bad_input_is_refused_naming_the_op(call, error, message):
    x, gamma, beta = _operands((2, 3, 3, 6))
    with pytest.raises(error, match=message):
        call(x, gamma, beta)
