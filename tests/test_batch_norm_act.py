"""Batch norm as its own op (`fcnn.ops._batch_norm`): its tangent and cotangent maps are each
other's transposes, its batching, the native kernels' calls, and `serial`'s BatchNorm -> ReLU
fusion in the shipped ResNets. Values, VJPs, JVPs and second order against the oracle are in
tests/test_norm.py (check_op), special values in tests/test_nonfinite.py."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcnn
import models
from fcnn import layers as L
from fcnn import ops
from fcnn import reference as R
from fcnn.ops import onednn
from fcnn.testing import assert_close
from tests.strategies import normal

built = pytest.mark.skipif(not onednn.AVAILABLE, reason=f"native kernels: {onednn.WHY_NOT}")
primitive = pytest.mark.skipif(ops.binding() != "primitive",
                               reason="the op's primitives: the primitive binding")


def operands(dtype=jnp.float64, shape=(4, 3, 5, 6)):
    x = normal(0, shape, dtype) * 2 + 1
    return x, (normal(1, shape[-1:], dtype) + 1), normal(2, shape[-1:], dtype)


@primitive
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_the_tangent_and_cotangent_maps_are_each_others_transpose(relu, dtype):
    """<t(a, b, c, e), (u, uμ, uv)> = <a, dx> + <b, dgamma> + <c, dbeta> + <e, dr> for (dx,
    dgamma, dbeta, dr) = c(u, uμ, uv), with a residual; float32 runs the native backward. y is
    given zeros and a NaN at the mask's edges: 0 where y <= 0, the tangent itself where y is
    NaN."""
    from fcnn.ops import _batch_norm as B

    x, gamma, beta = operands(dtype)
    r = normal(4, x.shape, dtype)
    y, mu, var = jax.jit(lambda x, g, b, r: B.batch_norm(x, g, b, r, 1e-5, relu))(x, gamma,
                                                                                  beta, r)
    y = y.at[0, 0].set(0.0).at[1, 1, 1].set(jnp.nan)
    a, b, c = normal(5, x.shape, dtype), normal(6, gamma.shape, dtype), normal(7, beta.shape,
                                                                              dtype)
    e = normal(11, x.shape, dtype)
    u, umu, uvar = normal(8, y.shape, dtype), normal(9, mu.shape, dtype), normal(10, mu.shape,
                                                                                dtype)

    @jax.jit
    def products(a, b, c, e, u, umu, uvar):
        t = B._tangent((a, b, c, e), x, gamma, mu, var, y, 1e-5, relu)
        dx, dg, db, dr = B._cotangent_bind(u, umu, uvar, x, gamma, mu, var, y, 1e-5, relu,
                                           (True, True, True, True))
        lhs = jnp.vdot(t[0], u) + jnp.vdot(t[1], umu) + jnp.vdot(t[2], uvar)
        rhs = jnp.vdot(a, dx) + jnp.vdot(b, dg) + jnp.vdot(c, db) + jnp.vdot(e, dr)
        return lhs, rhs, t[0]

    lhs, rhs, t = products(a, b, c, e, u, umu, uvar)
    scale = float(sum(jnp.linalg.norm(v) for v in (a, b, c, e))
                  * sum(jnp.linalg.norm(v) for v in (u, umu, uvar)))
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=(1e-5 if dtype == jnp.float32 else 1e-12)
                               * scale)
    if relu:
        assert float(jnp.abs(t[0, 0]).max()) == 0.0
        assert not bool(jnp.isnan(t[1, 1, 1]).any()) and float(jnp.abs(t[1, 1, 1]).max()) > 0


def test_check_op_with_a_residual():
    """relu(batch_norm(x) + r), r differentiated too: every check of check_op (JVP, VJP, second
    order against the oracle and finite differences, the adjoint identity, jit, vmap)."""
    from fcnn.testing import check_op

    x, gamma, beta = operands(jnp.float32, (3, 2, 2, 4))
    r = normal(4, x.shape, jnp.float32)
    modes = ("fwd", "rev") if ops.binding() == "primitive" else ("rev",)
    check_op(lambda x, g, b, r: ops.batch_norm(x, g, b, activation="relu", residual=r),
             x, gamma, beta, r, modes=modes,
             reference=lambda x, g, b, r: R.batch_norm(x, g, b, activation="relu", residual=r))


def test_vmap_over_members_and_tangents():
    """An ensemble (members with their own x, gamma, beta: each its own batch statistics),
    forward and gradient, and a Hessian's columns (the tangent map under vmap)."""
    x, gamma, beta = operands()

    def loss(op):
        return lambda x, g, b: jnp.sum(jnp.sin(op(x, g, b, activation="relu")[0]))

    xs, gs, bs = jnp.stack([x, 2 * x, -x]), jnp.stack([gamma, -gamma, gamma]), jnp.stack(
        [beta, beta, -beta])
    got = jax.jit(jax.vmap(lambda *a: ops.batch_norm(*a, activation="relu")))(xs, gs, bs)
    want = jax.vmap(lambda *a: R.batch_norm(*a, activation="relu"))(xs, gs, bs)
    for a, b, name in zip(got, want, ("y", "mean", "var"), strict=True):
        assert_close(a, b, f"ensemble {name}")
    got = jax.jit(jax.vmap(jax.grad(loss(ops.batch_norm), (0, 1, 2))))(xs, gs, bs)
    want = jax.vmap(jax.grad(loss(R.batch_norm), (0, 1, 2)))(xs, gs, bs)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, "ensemble gradient")
    if ops.binding() == "primitive":
        assert_close(jax.hessian(lambda g: loss(ops.batch_norm)(x, g, beta))(gamma),
                     jax.hessian(lambda g: loss(R.batch_norm)(x, g, beta))(gamma), "Hessian")


def _custom_calls(fn, *args):
    return sorted(set(re.findall(r"fcnn_batch_norm_\w+", jax.jit(fn).lower(*args).as_text())))


@built
@primitive
def test_on_the_cpu_each_direction_is_one_native_call():
    """float32: one forward call, one backward call, dx computed only when wanted; float64 runs
    the composed maths (no call)."""
    x, gamma, beta = operands(jnp.float32)
    f = lambda x, g, b: jnp.sum(jnp.cos(ops.batch_norm(x, g, b, activation="relu")[0]))
    assert _custom_calls(f, x, gamma, beta) == ["fcnn_batch_norm_fwd"]
    assert _custom_calls(jax.grad(f, (0, 1, 2)), x, gamma, beta) == [
        "fcnn_batch_norm_bwd", "fcnn_batch_norm_fwd"]
    text = jax.jit(jax.grad(f, (1, 2))).lower(x, gamma, beta).as_text()
    assert "tensor<0xf32>" in text  # dx not wanted: a zero-sized result
    assert _custom_calls(jax.grad(f, (0, 1, 2)), *operands(jnp.float64)) == []


def _batch_norms(fn, *args):
    """(relu, with a residual) of each batch norm the jaxpr binds."""
    eqns = jax.make_jaxpr(fn)(*args).eqns
    return [(e.params["relu"], len(e.invars) == 4) for e in eqns
            if e.primitive.name == "fcnn_batch_norm"]


def test_the_resnets_run_batch_norm_then_relu_fused():
    """ResNet-20: the stem's and each block's first BatchNorm -> ReLU (inside serial(Conv2D,
    BatchNorm) followed by a ReLU) bind the op with its ReLU, each block's second batch norm
    the op with the residual add and the ReLU after it (residual(block, shortcut) -> ReLU):
    all 19 ReLUs, as `summary` says; train-mode output, new state and gradients, and the inference
    output, equal the oracle model's; params and state keep their structure."""
    model = models.resnet20()
    shape = (12, 12, 3)
    params, _ = model.init(jax.random.key(0), shape)
    state = model.init_state(shape)
    x = normal(3, (4, *shape), jnp.float32)
    ref = L.with_ops(model, R)
    assert jax.tree_util.tree_structure((params, state)) == jax.tree_util.tree_structure(
        (ref.init(jax.random.key(0), shape)[0], ref.init_state(shape)))
    train = lambda m: (lambda p, s, x: m.apply_with_state(p, s, x, train=True))
    if ops.binding() == "primitive":
        bns = _batch_norms(train(model), params, state, x)
        assert bns.count((True, False)) == 10 and bns.count((True, True)) == 9, bns
        rows = [r.name for r in fcnn.summary(model, shape).rows if " ReLU" in r.name]
        assert len(rows) == 19 and all("(fused into" in r for r in rows), rows
    (y, new), (y_ref, new_ref) = jax.jit(train(model))(params, state, x), train(ref)(params,
                                                                                    state, x)
    assert_close(y, y_ref, "train-mode logits")
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(new_ref),
                    strict=True):
        assert_close(a, b, "running statistics")
    loss = lambda m: (lambda p: jnp.sum(jnp.sin(train(m)(p, state, x)[0])))
    for a, b in zip(jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(model)))(params)),
                    jax.tree_util.tree_leaves(jax.grad(loss(ref))(params)), strict=True):
        assert_close(a, b, "gradient", rtol=1e-4, atol=1e-4 * max(1.0, float(jnp.abs(b).max())))
    assert_close(jax.jit(model.apply_with_state)(params, new, x)[0],
                 ref.apply_with_state(params, new, x)[0], "inference")


def test_summary_names_the_leaf_a_relu_is_fused_into():
    net = L.serial(L.serial(L.Conv2D(2, 3), L.BatchNorm()), L.ReLU(), L.BatchNorm(), L.ReLU(),
                   L.serial(L.Conv2D(2, 1), L.ReLU()), L.ReLU(),
                   L.residual(L.serial(L.Conv2D(2, 1), L.BatchNorm())), L.ReLU(),
                   L.residual(L.Conv2D(2, 1)), L.ReLU())
    names = [r.name for r in fcnn.summary(net, (8, 8, 1)).rows]
    assert names == ["Input", "0.0 Conv2D", "0.1 BatchNorm", "1 ReLU (fused into 0.1)",
                     "2 BatchNorm", "3 ReLU (fused into 2)", "4.0 Conv2D",
                     "4.1 ReLU (fused into 4.0)", "5 ReLU", "6.block.0 Conv2D",
                     "6.block.1 BatchNorm", "7 ReLU (fused into 6.block.1 with the add)",
                     "8.block Conv2D", "9 ReLU"]


def test_a_module_without_activation_does_not_fuse():
    """`with_ops` onto a module whose batch_norm takes no `activation` keeps the layers apart,
    with the same result."""

    class Plain:
        batch_norm = staticmethod(lambda x, g, b, *, eps: R.batch_norm(x, g, b, eps=eps))
        batch_norm_inference = staticmethod(R.batch_norm_inference)
        relu = staticmethod(R.relu)

    net = L.serial(L.BatchNorm(), L.ReLU())
    plain = L.with_ops(net, Plain)
    assert L.combinators.fusions(plain.info.children) == {}
    assert list(L.combinators.fusions(net.info.children)) == [0]
    params, _ = net.init(jax.random.key(0), (3, 3, 2))
    state = net.init_state((3, 3, 2))
    x = normal(0, (4, 3, 3, 2), jnp.float32)
    for train in (True, False):
        got = net.apply_with_state(params, state, x, train=train)
        want = plain.apply_with_state(params, state, x, train=train)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                        strict=True):
            assert_close(a, b, f"plain vs fused, train={train}")


@primitive
def test_batch_norm_with_relu_binds_one_op():
    """The pair is one rule binding (fcnn_batch_norm with relu), no separate ReLU's."""
    from fcnn.testing import rule_bindings

    x, gamma, beta = operands(jnp.float32)
    call = lambda: ops.batch_norm(x, gamma, beta, activation="relu")
    assert rule_bindings(call) == 1, jax.make_jaxpr(call)()
    assert [e.primitive.name for e in jax.make_jaxpr(call)().eqns] == ["fcnn_batch_norm"]


def test_an_exported_program_holds_the_composed_maths():
    """`jax.export` for the CPU (and the other platforms) holds no native call: JAX serialises
    only custom calls it can vouch for, so the exported gradient runs the same maths by XLA,
    and its value is the jitted one's."""
    x, gamma, beta = operands(jnp.float32)
    f = jax.grad(lambda x, g, b: jnp.sum(jnp.sin(ops.batch_norm(x, g, b, activation="relu")[0])),
                 (0, 1, 2))
    exported = jax.export.export(jax.jit(f), platforms=["cpu", "cuda", "tpu"])(x, gamma, beta)
    assert "stablehlo.custom_call @fcnn" not in exported.mlir_module()
    for a, b in zip(exported.call(x, gamma, beta), jax.jit(f)(x, gamma, beta), strict=True):
        assert_close(a, b, "exported vs jitted")


def test_a_resnet_train_step_lowers_for_gpu_and_tpu_without_native_calls():
    """ResNet-20's train step (batch norm with its ReLU and residual add in every block) lowered
    for CUDA and TPU: XLA's convolutions and the composed batch norm, no native call."""
    import optax

    from fcnn import train

    model = models.resnet20()
    shape = (8, 8, 3)
    params, _ = model.init(jax.random.key(0), shape)
    opt = optax.sgd(0.1, momentum=0.9)
    step = train.make_step(model, opt)
    args = (params, opt.init(params), jnp.zeros((2, *shape)), jnp.zeros(2, jnp.int32),
            jax.random.key(1), model.init_state(shape))
    for platform in ("cuda", "tpu"):
        text = jax.jit(step).trace(*args).lower(lowering_platforms=(platform,)).as_text()
        assert "custom_call @fcnn" not in text, platform
        # 19 convolutions: forward, dK, and dX but for the first layer's (the data's)
        assert text.count("stablehlo.convolution") == 19 * 3 - 1, platform
