"""conv2d with a bias or an activation: one op, y = act(conv(x, w) + b), with its own rules
(fcnn.ops.convolution.fused). The sweeps of test_conv.py (values, VJPs, second order under every
algorithm) and test_nonfinite.py (NaN and infinities) cover it through `activation`; these tests
check what is particular to it: the whole check_op table, its two linear maps being each other's
transpose, batching, the native calls it makes, and serial's fusion of Conv2D -> ReLU."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from fcnn import layers as L
from fcnn import ops, testing
from fcnn import reference as R
from fcnn.ops import onednn
from fcnn.ops.convolution import algorithms as algo
from fcnn.testing import assert_close
from tests.strategies import normal

KW = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))
# forward and reverse where the binding has forward mode (the default), else reverse only
MODES = ("fwd", "rev") if ops.binding() == "primitive" else ("rev",)
built = pytest.mark.skipif(not onednn.AVAILABLE, reason=f"oneDNN: {onednn.WHY_NOT}")


def operands(dtype=jnp.float64, groups=1):
    return (normal(0, (3, 7, 8, 2 * groups), dtype), normal(1, (3, 2, 2, 4 * groups), dtype),
            normal(2, (4 * groups,), dtype))


@pytest.mark.parametrize("algorithm", ["auto", *algo.ALGORITHMS])
@pytest.mark.parametrize("bias", [True, False])
def test_check_op_passes_every_check(algorithm, bias):
    """Value, VJP, JVP, second order against the oracle and finite differences, the adjoint
    identity, jit and vmap (float64, where "onednn" runs XLA's convolution: its float32 kernels
    are swept by test_conv.py and test_nonfinite.py)."""
    x, w, b = operands()
    args = (x, w, b) if bias else (x, w)
    report = testing.check_op(
        lambda *a: ops.conv2d(*a, **KW, activation="relu", algorithm=algorithm), *args,
        reference=lambda *a: R.conv2d(*a, **KW, activation="relu"), modes=MODES,
        raise_on_failure=False)
    assert not report.failures, str(report)


def _maps():
    from fcnn.ops.convolution import fused as A

    return A


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("algorithm", ["xla", "im2col"] + (["onednn"] if onednn.AVAILABLE else []))
def test_the_tangent_and_cotangent_maps_are_each_others_transpose(relu, algorithm):
    """<t(a, b, c), u> = <a, dx(u)> + <b, dw(u)> + <c, db(u)> for the fused op's two linear
    maps, in float32 under each algorithm (the native backward under "onednn")."""
    A = _maps()
    x, w, b = operands(jnp.float32)
    cfg = ops.conv._config("t", x.shape, w.shape, KW["stride"], KW["padding"], KW["dilation"],
                           1, algorithm)
    y = jax.jit(lambda x, w, b: A.conv_act(x, w, b, cfg, relu))(x, w, b)
    y = y.at[0, 0].set(0.0).at[1, 1, 1].set(jnp.nan)  # the mask's edges: y = 0 and a NaN y
    a, bw, c = normal(5, x.shape, x.dtype), normal(6, w.shape, x.dtype), normal(7, b.shape)
    u = normal(8, y.shape, x.dtype)

    @jax.jit
    def products(a, bw, c, u):
        t = A._tangent((a, bw, c.astype(x.dtype)), x, w, y, cfg, relu)
        dx, dw, db = A._cotangent(u, x, w, y, cfg, relu, (True, True, True))
        return (jnp.vdot(t, u),
                jnp.vdot(a, dx) + jnp.vdot(bw, dw) + jnp.vdot(c.astype(x.dtype), db), t)

    lhs, rhs, t = products(a, bw, c, u)
    scale = float(jnp.linalg.norm(u) * (jnp.linalg.norm(a) * jnp.linalg.norm(w)
                                       + jnp.linalg.norm(x) * jnp.linalg.norm(bw)
                                       + jnp.linalg.norm(c) * np.sqrt(y.size)))
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-5 * scale)
    # the mask: 0 where y <= 0, the tangent itself where y is NaN (ReLU's slope there is 1)
    if relu:
        assert float(jnp.abs(t[0, 0]).max()) == 0.0
        assert not bool(jnp.isnan(t[1, 1, 1]).any()) and float(jnp.abs(t[1, 1, 1]).max()) > 0


def test_vmap_over_examples_members_and_tangents():
    x, w, b = operands()
    f = lambda x, w, b: ops.conv2d(x, w, b, **KW, activation="relu")
    r = lambda x, w, b: R.conv2d(x, w, b, **KW, activation="relu")
    loss = lambda f: (lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b))))
    # per-example gradients: the cotangent map under vmap
    per = jax.jit(jax.vmap(jax.grad(loss(f), (1, 2)), (0, None, None)))(x[:, None], w, b)
    want = jax.vmap(jax.grad(loss(r), (1, 2)), (0, None, None))(x[:, None], w, b)
    for got, ref in zip(per, want, strict=True):
        assert_close(got, ref, "per-example gradient")
    # an ensemble of kernels and biases (members), forward and gradient
    ws, bs = jnp.stack([w, -w, 2 * w]), jnp.stack([b, b, -b])
    assert_close(jax.vmap(f, (None, 0, 0))(x, ws, bs), jax.vmap(r, (None, 0, 0))(x, ws, bs),
                 "ensemble")
    got = jax.vmap(jax.grad(loss(f), (0, 1, 2)), (None, 0, 0))(x, ws, bs)
    for a, ref in zip(got, jax.vmap(jax.grad(loss(r), (0, 1, 2)), (None, 0, 0))(x, ws, bs),
                      strict=True):
        assert_close(a, ref, "ensemble gradient")
    # a Hessian's columns: the tangent map under vmap, and forward over reverse
    if "fwd" in MODES:
        assert_close(jax.hessian(lambda b: loss(f)(x, w, b))(b),
                     jax.hessian(lambda b: loss(r)(x, w, b))(b), "hessian in b")


def _custom_calls(fn, *args):
    return sorted(set(re.findall(r"fcnn_onednn_\w+", jax.jit(fn).lower(*args).as_text())))


@built
def test_on_onednn_each_direction_is_one_native_call():
    """The forward is one call (bias in oneDNN's kernel, ReLU per cached chunk); the backward
    is one call (after XLA's mask) computing only what is wanted: no dX for an input that needs
    no gradient."""
    x, w, b = operands(jnp.float32)
    f = lambda x, w, b: jnp.sum(ops.conv2d(x, w, b, **KW, activation="relu", algorithm="onednn"))
    assert _custom_calls(f, x, w, b) == ["fcnn_onednn_conv_act_fwd"]
    assert _custom_calls(jax.grad(f, (0, 1, 2)), x, w, b) == [
        "fcnn_onednn_conv_act_bwd", "fcnn_onednn_conv_act_fwd"]
    if ops.binding() == "primitive":  # a custom_vjp's backward cannot know what is wanted
        text = jax.jit(jax.grad(f, (1, 2))).lower(x, w, b).as_text()
        assert "tensor<0x0x0x0xf32>" in text  # dX not wanted: a zero-sized result
    # another dtype runs XLA's convolution with the same epilogue
    x64, w64, b64 = operands(jnp.float64)
    assert _custom_calls(jax.grad(f, (0, 1, 2)), x64, w64, b64) == []


@built
@pytest.mark.parametrize("batch", [1, 3, 37])
def test_the_native_backward_chunks_and_pieces_sum_right(batch):
    """Batches cut into pieces per thread and chunks per cache (37 images of 16 channels at
    24x24: several chunks per piece), against the oracle."""
    x = normal(0, (batch, 24, 24, 16), jnp.float32)
    w = normal(1, (3, 3, 16, 16), jnp.float32)
    b = normal(2, (16,), jnp.float32)
    f = lambda x, w, b: ops.conv2d(x, w, b, padding=1, activation="relu", algorithm="onednn")
    r = lambda x, w, b: R.conv2d(x, w, b, padding=1, activation="relu")
    testing.check_vjp(f, r, x, w, b)


def test_serial_runs_conv_then_relu_as_the_fused_op():
    """LeNet-5's two Conv2D -> ReLU pairs bind the fused op with ReLU, and nothing else binds
    a convolution or a ReLU there; params are unchanged, and the output equals the oracle
    model's (which runs no fusion of its own: plain lax throughout)."""
    model = models.lenet5()
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    x = normal(3, (2, 28, 28, 1), jnp.float32)
    eqns = jax.make_jaxpr(lambda p, x: model.apply(p, x))(params, x).eqns
    names = [e.primitive.name for e in eqns if e.primitive.name.startswith("fcnn")]
    if ops.binding() == "primitive":
        assert names.count("fcnn_conv_act") == 2 and "fcnn_conv" not in names, names
        assert all(e.params["relu"] for e in eqns if e.primitive.name == "fcnn_conv_act")
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        L.with_ops(model, R).init(jax.random.key(0), (28, 28, 1))[0])
    assert_close(jax.jit(model.apply)(params, x), L.with_ops(model, R).apply(params, x),
                 "lenet5 fused vs the oracle")
    unfused = L.serial(*[L.serial(c) for c in model.info.children])  # no pair in one serial
    assert not L.combinators.fusions(unfused.info.children)
    assert_close(jax.jit(unfused.apply)(params_of(unfused, params), x),
                 jax.jit(model.apply)(params, x), "unfused vs fused")


def params_of(unfused, params):
    return tuple((p,) for p in params)


def test_a_module_without_activation_does_not_fuse():
    """`with_ops` onto a module whose conv2d takes no `activation` keeps the two layers apart."""

    class Plain:
        conv2d = staticmethod(lambda x, w, b=None, *, stride, padding, dilation, groups:
                              R.conv2d(x, w, b, stride=stride, padding=padding,
                                       dilation=dilation, groups=groups))
        relu = staticmethod(R.relu)

    net = L.serial(L.Conv2D(3, 3), L.ReLU())
    plain = L.with_ops(net, Plain)
    assert L.combinators.fusions(plain.info.children) == {}
    assert list(L.combinators.fusions(net.info.children)) == [0]
    params, _ = net.init(jax.random.key(0), (6, 6, 2))
    x = normal(0, (2, 6, 6, 2), jnp.float32)
    assert_close(plain.apply(params, x), net.apply(params, x), "plain vs fused")


def test_bad_activation_is_refused():
    x, w, b = operands(jnp.float32)
    with pytest.raises(ValueError, match=r"conv2d: `activation` must be one of \(None, 'relu'\), "
                                         r"got 'gelu'\."):
        ops.conv2d(x, w, b, activation="gelu")
