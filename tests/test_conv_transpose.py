"""The transposed convolution (the dX map run forward), and the convolution and pooling layers of
every rank:
against lax.conv_transpose's autodiff, PyTorch in float64, and their own transposition
identities. (The 1-D/3-D maps themselves are swept with the 2-D ones in test_conv.py.)"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fcnn
import fcnn.shapes
from fcnn import layers as L
from fcnn import ops
from fcnn import reference as R
from fcnn.ops.convolution.algorithms import ALGORITHMS
from fcnn.testing import assert_close, check_vjp
from tests.strategies import costly, normal

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
# oneDNN (float32 only) is proven below; every run sweeps the phase split and im2col's col2im
# (the dX map's own sweep in test_conv.py takes every algorithm), the thorough profile all
RANKED = [a for a in ALGORITHMS if a != "onednn" and (THOROUGH or a in ("phase", "im2col"))]


@st.composite
def transposed_cases(draw):
    """A transposed convolution of any rank: kernel, stride, dilation, padding (symmetric or
    explicit pairs), an output_padding below max(stride, dilation), groups, bias."""
    rank = draw(st.sampled_from([2, 1, 3]))
    groups = draw(st.sampled_from([1, 2]))
    k = tuple(draw(st.integers(1, 3 if rank < 3 else 2)) for _ in range(rank))
    s = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    d = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    extra = tuple(draw(st.integers(0, max(a, b) - 1)) for a, b in zip(s, d))
    sizes = tuple(draw(st.integers(1, 4 if rank < 3 else 3)) for _ in range(rank))
    pads = []
    for n, kk, ss, dd, e in zip(sizes, k, s, d, extra):  # keep the output at least 1 cell
        room = (n - 1) * ss + dd * (kk - 1) + e
        lo = draw(st.integers(0, min(2, room)))
        pads.append((lo, draw(st.integers(0, min(2, room - lo)))))
    symmetric = all(lo == hi for lo, hi in pads) and draw(st.booleans())
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    return dict(rank=rank, x_shape=(draw(st.sampled_from([1, 2])), *sizes, cin),
                w_shape=(*k, cout // groups, cin), bias=draw(st.booleans()),
                kwargs=dict(stride=s, dilation=d, output_padding=extra, groups=groups,
                            padding=tuple(p for p, _ in pads) if symmetric else tuple(pads)))


def _operands(case, dtype):
    x = normal(0, case["x_shape"], dtype)
    w = normal(1, case["w_shape"], dtype)
    b = normal(2, (case["w_shape"][-2] * case["kwargs"]["groups"],), dtype)
    return (x, w, b) if case["bias"] else (x, w)


@pytest.mark.parametrize("algorithm", RANKED)
@costly(ci_examples=4)  # the dX map it runs is swept in test_conv.py too
@given(case=transposed_cases())
def test_value_vjp_and_second_order_match_lax_conv_transpose(case, algorithm):
    ours = getattr(ops, f"conv_transpose{case['rank']}d")
    oracle = getattr(R, f"conv_transpose{case['rank']}d")
    kw = case["kwargs"]
    args = _operands(case, jnp.float64)
    check_vjp(lambda *a: ours(*a, **kw, algorithm=algorithm), lambda *a: oracle(*a, **kw), *args)

    def second(f):
        def outer(*a):
            inner = jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a, **kw)) ** 2), argnums=(0, 1))
            gx, gw = inner(*a)
            return jnp.sum(gx ** 2) + jnp.sum(jnp.cos(gw))
        return jax.grad(outer, argnums=(0, 1))(*args)

    for got, want in zip(second(lambda *a, **k: ours(*a, **k, algorithm=algorithm)),
                         second(oracle), strict=True):
        assert_close(got, want, "second order")


@pytest.mark.skipif("onednn" not in ALGORITHMS, reason="the native part is not built")
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_onednn_backward_data_kernel_runs_it(rank):
    """oneDNN's backward-data kernel as the transposed convolution (float32)."""
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    x = normal(0, (2, *(5,) * rank, 4) if rank < 3 else (2, 3, 4, 5, 4), jnp.float32)
    w = normal(1, (*(3,) * rank, 3, 4), jnp.float32)
    f = getattr(ops, f"conv_transpose{rank}d")
    check_vjp(lambda x, w: f(x, w, **kw, algorithm="onednn"),
              lambda x, w: getattr(R, f"conv_transpose{rank}d")(x, w, **kw), x, w)


def test_its_rules_are_the_three_maps():
    """The VJP for x is the forward convolution, for w the dK map with the roles swapped
    (written out: conv_transpose(x) = conv_dx(x, w) of the conv2d it transposes)."""
    x, w, u = normal(0, (2, 3, 4, 4)), normal(1, (3, 3, 2, 4)), normal(2, (2, 5, 8, 2))
    kw = dict(stride=2, padding=1, output_padding=(0, 1))
    y, vjp = jax.vjp(lambda x, w: ops.conv_transpose2d(x, w, **kw), x, w)
    assert y.shape == (2, 5, 8, 2)  # (n - 1) * 2 - 2 + 2 + (0, 1) + 1 per axis
    dx, dw = vjp(u)
    np.testing.assert_array_equal(ops.conv2d_grad_input(x, w, y.shape, stride=2, padding=1), y)
    assert_close(dx, ops.conv2d(u, w, stride=2, padding=1), "dx")
    assert_close(dw, ops.conv2d_grad_kernel(u, x, w.shape, stride=2, padding=1), "dw")
    if ops.binding() == "primitive":  # (custom_vjp calls hold their computation's lax ops)
        grad = jax.grad(lambda x: jnp.sum(ops.conv_transpose2d(x, w, **kw)))
        jaxpr = str(jax.make_jaxpr(grad)(x))
        assert "fcnn_conv" in jaxpr and "conv_general_dilated" not in jaxpr


def test_forward_mode_and_hessian_run_through_its_rules():
    if ops.binding() != "primitive":
        pytest.skip("forward mode needs the primitive binding")
    x, w = normal(0, (1, 3, 2)), normal(1, (3, 2, 2))

    def f(conv, **extra):
        return lambda w: jnp.sum(jnp.tanh(conv(x, w, stride=2, output_padding=1, **extra)))

    assert_close(jax.hessian(f(ops.conv_transpose1d))(w), jax.hessian(f(R.conv_transpose1d))(w),
                 "hessian")


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_against_pytorch_in_float64(rank):
    """ConvTranspose1d/2d/3d with output_padding, groups, dilation and a bias; Conv1d/3d with
    groups and dilation: values and gradients at rtol 1e-10."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(rank)
    sp = (5, 4, 3)[:rank]
    to_t = (0, rank + 1, *range(1, rank + 1))  # channels-last -> channels-first
    back = (0, *range(2, rank + 2), 1)
    kernel_t = (rank + 1, rank, *range(rank))  # (*k, I, O) -> (O-or-C_in, I, *k)
    kernel_back = (*range(2, rank + 2), 1, 0)

    def compare(ours, theirs, x, w, b, kw):
        xt = torch.tensor(x).permute(*to_t).requires_grad_()
        wt = torch.tensor(w).permute(*kernel_t).contiguous().requires_grad_()
        bt = torch.tensor(b).requires_grad_()
        yt = theirs(xt, wt, bt, **kw)
        u = rng.standard_normal(yt.permute(*back).shape)
        yt.backward(torch.tensor(u).permute(*to_t))
        y, vjp = jax.vjp(lambda x, w, b: ours(x, w, b, **kw), *map(jnp.asarray, (x, w, b)))
        got = (y, *vjp(jnp.asarray(u)))
        want = (yt.permute(*back), xt.grad.permute(*back), wt.grad.permute(*kernel_back),
                bt.grad)
        for g, t, name in zip(got, want, ("y", "dx", "dw", "db"), strict=True):
            np.testing.assert_allclose(g, t.detach().numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {rank} {name}")

    kw = dict(stride=(2, 1, 3)[:rank], padding=(1, 0, 1)[:rank],
              output_padding=(1, 0, 2)[:rank], dilation=(1, 2, 1)[:rank], groups=2)
    x, w = rng.standard_normal((2, *sp, 4)), rng.standard_normal((*(3,) * rank, 3, 4))
    compare(getattr(ops, f"conv_transpose{rank}d"), getattr(F, f"conv_transpose{rank}d"), x, w,
            rng.standard_normal(6), kw)
    kw = dict(stride=(2, 1, 2)[:rank], padding=(1, 2, 0)[:rank], dilation=(2, 1, 1)[:rank],
              groups=2)
    x, w = rng.standard_normal((2, *(7, 6, 5)[:rank], 4)), rng.standard_normal(
        (*(3,) * rank, 2, 6))
    compare(getattr(ops, f"conv{rank}d"), getattr(F, f"conv{rank}d"), x, w,
            rng.standard_normal(6), kw)


def test_dcgan_generator_shapes_and_output_padding_beyond_the_stride():
    """4x4 kernels, stride 2, padding 1 double the size (Radford et al. 2015's generator); an
    output_padding at or past the stride (allowed below the dilation) appends cells no input
    reaches: PyTorch's rule, against lax."""
    x, w = normal(0, (2, 4, 4, 8)), normal(1, (4, 4, 3, 8))
    assert ops.conv_transpose2d(x, w, stride=2, padding=1).shape == (2, 8, 8, 3)
    kw = dict(stride=2, dilation=3, output_padding=2)
    check_vjp(lambda x, w: ops.conv_transpose2d(x, w, **kw),
              lambda x, w: R.conv_transpose2d(x, w, **kw), x, w)
    y = ops.conv_transpose1d(normal(0, (1, 3, 1)), jnp.ones((2, 1, 1)), stride=1, dilation=3,
                             output_padding=2)
    assert y.shape == (1, 8, 1) and float(y[0, -1, 0]) == 0.0  # no input reaches the last cell


@pytest.mark.parametrize("call,pattern", [
    (lambda: ops.conv_transpose2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 2, 4))),
     r"conv_transpose2d: x has 3 channels but w expects 4 \(w.shape\[-1\]"),
    (lambda: ops.conv_transpose2d(jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 2, 4)), stride=2,
                                  output_padding=2),
     r"conv_transpose2d: `output_padding` must be smaller than the stride or the dilation"),
    (lambda: ops.conv_transpose2d(jnp.ones((1, 2, 2, 4)), jnp.ones((3, 3, 2, 4)), padding=3),
     r"conv_transpose2d: the output would have size \(-2, -2\)"),
    (lambda: ops.conv_transpose1d(jnp.ones((1, 4, 4)), jnp.ones((3, 2, 4)), padding="SAME"),
     r"conv_transpose1d: `padding` must be an int, one int per axis"),
    (lambda: ops.conv_transpose3d(jnp.ones((4, 4, 4)), jnp.ones((3, 3, 3, 2, 4))),
     r"conv_transpose3d: `x` must have rank 4 \(D, H, W, C\) or 5 \(N, D, H, W, C\)"),
    (lambda: ops.conv1d(jnp.ones((1, 4, 4)), jnp.ones((3, 3, 4, 2))),
     r"conv1d: `w` must have rank 3 \(W, C_in // groups, C_out\)"),
    (lambda: ops.conv1d(jnp.ones((1, 9, 4)), jnp.ones((3, 4, 2)), stride=(1, 2)),
     r"conv1d: `stride` must be an int or a 1-tuple \(w,\), got \(1, 2\)"),
    (lambda: ops.conv3d(jnp.ones((1, 4, 4, 4, 1)), jnp.ones((3, 3, 3, 1, 2)), algorithm="fft"),
     r"conv3d: `algorithm` must be 'auto' or one of \("),
])
def test_bad_input_is_refused_with_a_clear_message(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("layer,shape,out", [
    (L.Conv1D(8, 3, stride=2, padding=1), (16, 3), (8, 8)),
    (L.Conv3D(4, 3, padding="SAME", groups=2), (5, 6, 7, 2), (5, 6, 7, 4)),
    (L.ConvTranspose1D(3, 3, stride=2, padding=1, output_padding=1), (5, 2), (10, 3)),
    (L.ConvTranspose2D(3, 4, stride=2, padding=1), (4, 4, 8), (8, 8, 3)),
    (L.ConvTranspose3D(2, 2, stride=2, groups=2), (2, 3, 4, 4), (4, 6, 8, 2)),
    (L.Conv1D(4, 5, padding=2, padding_mode="circular"), (9, 2), (9, 4)),
    (L.serial(L.MaxPool1D(3, 2, 1), L.AvgPool1D(2)), (9, 2), (2, 2)),
    (L.serial(L.MaxPool3D(2), L.AvgPool3D((1, 2, 2), padding=((0, 0), (1, 1), (1, 1)))),
     (4, 6, 4, 3), (2, 2, 2, 3)),
    (L.serial(L.parallel(L.GlobalMaxPool1D(), L.GlobalAvgPool1D()), L.Concat()), (7, 3),
     (6,)),
    (L.serial(L.GlobalMaxPool3D()), (3, 2, 4, 5), (5,)),
    (L.serial(L.Conv3D(2, 3, padding=1), L.GlobalAvgPool3D()), (3, 2, 4, 5), (2,)),
    (L.GlobalMaxPool2D(), (3, 4, 5), (5,)),
])
def test_layers_match_the_oracle_in_value_and_gradient(layer, shape, out):
    params, got = layer.init(jax.random.key(0), shape)
    assert got == out
    x = normal(3, (2, *shape), jnp.float32)
    oracle = L.with_ops(layer, R)

    def loss(net):
        return lambda p: jnp.sum(jnp.sin(net.apply(p, x)))

    assert_close(layer.apply(params, x), oracle.apply(params, x), "value", rtol=1e-5,
                 atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss(layer))(params)),
                    jax.tree_util.tree_leaves(jax.grad(loss(oracle))(params)), strict=True):
        assert_close(a, b, "gradient", rtol=1e-4, atol=1e-4)
    assert layer.apply(params, x[0]).shape == out  # unbatched


def test_a_conv1d_then_relu_is_fused_and_summary_counts_every_rank():
    net = L.serial(L.Conv1D(4, 3), L.ReLU(), L.MaxPool2D(1))  # (the pool: a 2-D leaf, refused)
    with pytest.raises(ValueError, match=r"MaxPool2D: expects \(H, W, C\) input, got \(14, 4\)"):
        net.init(jax.random.key(0), (16, 2))
    s = fcnn.summary(L.serial(L.Conv1D(4, 3), L.ReLU(), L.Conv1D(2, 3, stride=2)), (16, 2))
    assert "fused into 0" in s.rows[2].name
    assert s.rows[-1].receptive_field == (5,)  # 1 + 2 + 2
    assert s.rows[1].flops == 2 * 14 * 4 * 3 * 2  # out cells x channels x taps x C_in
    vol = fcnn.summary(L.Conv3D(2, 3, stride=2), (7, 7, 7, 1))
    assert vol.rows[-1].receptive_field == (3, 3, 3) and vol.rows[-1].output_shape == (3, 3, 3, 2)
    assert "drops" not in vol.rows[-1].note


def test_receptive_field_through_upsampling_layers():
    """A transposed convolution's output reads floor((F_eff - 1) / S) + 1 inputs, each 1/S of
    an input cell from its neighbour's; a conv after a x2 nearest upsample sees 3/2 cells."""
    up = fcnn.summary(L.serial(L.Conv2D(2, 3), L.ConvTranspose2D(2, 4, stride=2, padding=1)),
                      (8, 8, 1))
    assert up.rows[-1].output_shape == (12, 12, 2)
    assert up.rows[-1].receptive_field == (4, 4)  # 3 + (2 - 1) * 1
    assert up.rows[-1].flops == 2 * 6 * 6 * 2 * 16 * 2
    near = fcnn.shapes.receptive_field(L.serial(L.Upsample(2), L.Conv2D(1, 3)), (4, 4, 1))
    assert near == (2, 2)  # 1 + 2 * (1/2), rounded up
    net = L.serial(L.Conv2D(4, 3), L.PixelShuffle(2), L.Conv2D(1, 3))
    shuffled = fcnn.shapes.receptive_field(net, (6, 6, 1))
    assert shuffled == (4, 4)  # 3 + 2 * (1/2)


@pytest.mark.parametrize("name,shapes,kw", [
    ("conv_transpose2d", ((2, 3, 2, 4), (3, 2, 3, 4)),
     dict(stride=(2, 1), padding=((1, 0), (0, 1)), output_padding=(1, 0))),
    ("conv1d", ((2, 7, 3), (3, 3, 2)), dict(stride=2, padding=1, dilation=2)),
])
def test_check_op_finds_nothing_wrong(name, shapes, kw):
    """fcnn.testing.check_op's table: value, VJP, JVP and second order against the oracle and
    float64 finite differences, the adjoint identity, jit and vmap."""
    from fcnn.testing import check_op

    modes = ("fwd", "rev") if ops.binding() == "primitive" else ("rev",)
    args = tuple(normal(i, s) for i, s in enumerate(shapes))
    check_op(lambda *a: getattr(ops, name)(*a, **kw), *args,
             reference=lambda *a: getattr(R, name)(*a, **kw), modes=modes)
