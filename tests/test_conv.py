"""conv1d/2d/3d and their gradients: the hand-written rules against autodiff of plain lax. The
sweeps draw the rank (tests/strategies.py, RANKS); named cases are 2-D unless they say."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from jax.test_util import check_grads

from fcnn import ops
from fcnn import reference as R
from fcnn.ops.convolution.algorithms import ALGORITHMS, TAPS_BROADCAST_MAX
from fcnn.testing import assert_close, check_vjp, tolerance
from tests.strategies import conv_cases, costly, dtype_for, normal

# forward and reverse where the binding has forward mode (the default), else reverse only
MODES = ["fwd", "rev"] if ops.binding() == "primitive" else ["rev"]


def _operands(case, dtype, seed=0):
    """The case's x, w and b (None unless the case has a bias)."""
    x = normal(seed, case["x_shape"], dtype)
    w = normal(seed + 1, case["w_shape"], dtype)
    b = normal(seed + 2, (case["w_shape"][-1],), dtype) if case["bias"] else None
    return x, w, b


def _op(module, case, suffix=""):
    """The case's rank's op from `module` (fcnn.ops or the oracle): conv{rank}d{suffix}."""
    return getattr(module, f"conv{case['rank']}d{suffix}")


def _pair(f, case, **extra):
    kw = {**case["kwargs"], "activation": case["activation"], **extra}
    return (lambda x, w, b=None: f(x, w, b, **kw))


# Every algorithm behind the rules passes the whole sweep (forcing it, whatever "auto" picks).
algorithms = pytest.mark.parametrize("algorithm", ALGORITHMS)


def _assert_value_and_vjp_match(case, dtype, algorithm):
    x, w, b = _operands(case, dtype)
    args = (x, w) if b is None else (x, w, b)
    check_vjp(_pair(_op(ops, case), case, algorithm=algorithm), _pair(_op(R, case), case), *args)


@algorithms
@given(case=conv_cases())
def test_value_and_vjp_match_autodiff(case, algorithm):
    _assert_value_and_vjp_match(case, dtype_for(algorithm), algorithm)


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if dtype_for(a) != jnp.float32])
@costly(ci_examples=7)  # the rules are proven in float64 above; this sweeps float32's dtype path
@given(case=conv_cases())
def test_value_and_vjp_match_autodiff_in_float32(case, algorithm):
    _assert_value_and_vjp_match(case, jnp.float32, algorithm)


@algorithms
@costly(ci_examples=7)  # four programs compiled per example
@given(case=conv_cases())
def test_grad_input_and_grad_kernel_match_autodiff(case, algorithm):
    """The dX and dK ops equal jax.vjp of lax's conv, and so do their own VJPs (2nd order)."""
    x, w, _ = _operands(case, dtype_for(algorithm))
    kw = case["kwargs"]
    g = normal(7, jnp.shape(_op(R, case)(x, w, **kw)), x.dtype)
    dx, dk = "_grad_input", "_grad_kernel"
    check_vjp(
        lambda g, w: _op(ops, case, dx)(g, w, x.shape, **kw, algorithm=algorithm),
        lambda g, w: _op(R, case, dx)(g, w, x.shape, **kw),
        g, w,
    )
    check_vjp(
        lambda x, g: _op(ops, case, dk)(x, g, w.shape, **kw, algorithm=algorithm),
        lambda x, g: _op(R, case, dk)(x, g, w.shape, **kw),
        x, g,
    )


@algorithms
@costly(ci_examples=7)
@given(case=conv_cases())
def test_grad_of_grad_matches_autodiff(case, algorithm):
    x, w, b = _operands(case, dtype_for(algorithm))
    b = normal(3, (w.shape[-1],), x.dtype) if b is None else b

    def second(conv):
        def inner(x, w, b):
            return jnp.sum(jnp.sin(conv(x, w, b, **case["kwargs"],
                                        activation=case["activation"])) ** 2)

        def outer(x, w, b):
            gx, gw, gb = jax.grad(inner, argnums=(0, 1, 2))(x, w, b)
            return jnp.sum(gx * gx) + jnp.sum(jnp.cos(gw)) + jnp.sum(gb**3)

        return jax.jit(jax.grad(outer, argnums=(0, 1, 2)))

    ours = partial(_op(ops, case), algorithm=algorithm)
    # float32 (oneDNN): the second derivative chains four convolutions through sin and cos of
    # their results, computed by two different kernels; the worst seen, 1.3e-5 of the largest
    # element (x (2, 1, 2, 9), 9 channels), is rounding, so float32 gets rtol 1e-4 here
    loose = {} if x.dtype == jnp.float64 else dict(rtol=1e-4, atol=1e-5)
    for got, want, name in zip(second(ours)(x, w, b), second(_op(R, case))(x, w, b), "xwb",
                                strict=True):
        assert_close(got, want, f"d2/d{name}", **loose)


@algorithms
@pytest.mark.parametrize(
    "kw",
    [
        dict(stride=2, padding=((1, 0), (0, 2))),  # asymmetric, remainder r != 0
        dict(stride=(3, 2), padding="SAME", dilation=(1, 2)),
        dict(groups=2, padding=1),
    ],
)
def test_finite_differences_orders_1_and_2(kw, algorithm):
    if dtype_for(algorithm) != jnp.float64:
        pytest.skip("second-order finite differences need float64; oneDNN computes float32 "
                    "(its derivatives are proven against the oracle by the sweeps above)")
    x = normal(0, (2, 6, 5, 2))
    w = normal(1, (3, 2, 2 // kw.get("groups", 1), 4))
    b = normal(2, (4,))
    check_grads(lambda x, w, b: ops.conv2d(x, w, b, **kw, algorithm=algorithm), (x, w, b),
                order=2, modes=MODES)


@algorithms
@costly(ci_examples=7)  # exact identities, four programs per example
@given(case=conv_cases())
def test_adjoint_identities(case, algorithm):
    """<conv(v, w), u> == <v, dX(u, w)> and <conv(x, v), u> == <v, dK(x, u)>: the dX/dK ops are
    the exact transposes of the forward, linear in x and in w."""
    x, w, _ = _operands(case, dtype_for(algorithm))
    kw = {**case["kwargs"], "algorithm": algorithm}
    conv = _op(ops, case)
    u = normal(5, jax.eval_shape(lambda x, w: conv(x, w, **kw), x, w).shape, x.dtype)

    @jax.jit
    def products(x, w, u):
        return (
            jnp.vdot(conv(x, w, **kw), u),
            jnp.vdot(x, _op(ops, case, "_grad_input")(u, w, x.shape, **kw)),
            jnp.vdot(w, _op(ops, case, "_grad_kernel")(x, u, w.shape, **kw)),
        )

    lhs, via_dx, via_dk = products(x, w, u)
    scale = float(jnp.linalg.norm(x) * jnp.linalg.norm(w) * jnp.linalg.norm(u))
    exact = 1e-12 if x.dtype == jnp.float64 else 1e-5  # to the dtype's rounding
    np.testing.assert_allclose(via_dx, lhs, rtol=0, atol=exact * scale)
    np.testing.assert_allclose(via_dk, lhs, rtol=0, atol=exact * scale)


def test_matches_the_seed_definition_by_hand():
    """y[i,j] = sum_{a,b} x[i*s+a, j*s+b] w[a,b] on a 4x4 input, 2x2 kernel, stride 2 (by hand)."""
    x = jnp.arange(16.0).reshape(4, 4, 1)
    w = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
    y = ops.conv2d(x, w, stride=2)
    # window (0,0): 0*1 + 1*2 + 4*3 + 5*4 = 34; (0,1): 2+6+18+28 = 54; (1,0): 8*1+9*2+12*3+13*4
    np.testing.assert_array_equal(y[..., 0], [[34.0, 54.0], [114.0, 134.0]])
    # dK = cross-correlation of x with g; with g = 1 it sums the four windows' taps.
    dk = ops.conv2d_grad_kernel(x, jnp.ones_like(y), w.shape, stride=2)
    np.testing.assert_array_equal(dk[..., 0, 0], [[0 + 2 + 8 + 10, 1 + 3 + 9 + 11],
                                                   [4 + 6 + 12 + 14, 5 + 7 + 13 + 15]])
    # dX = full convolution of g with the kernel: each input cell gets the weight that touched it.
    dx = ops.conv2d_grad_input(jnp.ones_like(y), w, x.shape, stride=2)
    np.testing.assert_array_equal(dx[..., 0], jnp.tile(w[..., 0, 0], (2, 2)))


def test_unbatched_vmap_and_jit_agree():
    x = normal(0, (3, 7, 6, 4))
    w = normal(1, (3, 3, 2, 6))
    b = normal(2, (6,))
    kw = dict(stride=2, padding="SAME", groups=2)
    batched = ops.conv2d(x, w, b, **kw)
    per_example = jax.vmap(lambda xi: ops.conv2d(xi, w, b, **kw))(x)
    jitted = jax.jit(lambda x: ops.conv2d(x, w, b, **kw))(x)
    loop = jnp.stack([ops.conv2d(xi, w, b, **kw) for xi in x])
    for got in (per_example, jitted, loop):
        assert_close(got, batched, "conv2d")


def test_vmap_over_parameters_and_per_example_grads():
    x = normal(0, (4, 6, 6, 2))
    ws = normal(1, (3, 3, 3, 2, 5))  # 3 kernels

    def loss(w, x):
        return jnp.sum(ops.relu(ops.conv2d(x, w, padding=1)) ** 2)

    def ref_loss(w, x):
        return jnp.sum(R.relu(R.conv2d(x, w, padding=1)) ** 2)

    got = jax.vmap(jax.grad(loss), in_axes=(0, None))(ws, x)
    want = jnp.stack([jax.grad(ref_loss)(w, x) for w in ws])
    assert_close(got, want, "vmap over kernels")
    got = jax.vmap(jax.grad(loss), in_axes=(None, 0))(ws[0], x)  # per-example gradients
    want = jnp.stack([jax.grad(ref_loss)(ws[0], xi) for xi in x])
    assert_close(got, want, "per-example grads")


def test_jacrev_of_jacrev():
    x = normal(0, (1, 4, 4, 1))
    w = normal(1, (2, 2, 1, 2))

    def f(conv):
        return lambda w: jnp.sum(jnp.tanh(conv(x, w, stride=2)))

    got = jax.jacrev(jax.jacrev(f(ops.conv2d)))(w)
    want = jax.jacrev(jax.jacrev(f(R.conv2d)))(w)
    assert_close(got, want, "hessian")


def test_forward_mode_is_refused_under_the_custom_vjp_binding():
    """custom_vjp functions have no forward mode: JAX says so (docs/design.md, "Bindings")."""
    x, w = normal(0, (1, 4, 4, 1)), normal(1, (2, 2, 1, 1))
    before = ops.binding()
    with ops.using_binding("custom_vjp"), pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: ops.conv2d(x, w), (x,), (x,))
    assert ops.binding() == before  # restored
    with pytest.raises(ValueError, match="set_binding: the binding must be one of primitive, "
                                         "custom_vjp, got 'jvp'"):
        ops.set_binding("jvp")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_keeps_dtype(dtype):
    """Value and VJP in `dtype` keep the dtype and agree, within `dtype`'s tolerance, with the
    float64 oracle run on the same (already rounded) inputs and cotangent."""
    x, w, b = normal(0, (2, 6, 6, 3), dtype), normal(1, (3, 3, 3, 4), dtype), normal(2, (4,), dtype)
    kw = dict(stride=2, padding=1)
    y, vjp = jax.vjp(partial(ops.conv2d, **kw), x, w, b)
    g = normal(3, y.shape, dtype)
    f64 = lambda a: a.astype(jnp.float64)
    want, ref_vjp = jax.vjp(partial(R.conv2d, **kw), f64(x), f64(w), f64(b))
    pairs = [(y, want), *zip(vjp(g), ref_vjp(f64(g)), strict=True)]
    for name, (got, ref) in zip(["y", "dx", "dw", "db"], pairs, strict=True):
        assert got.dtype == dtype, name
        assert_close(f64(got), ref, f"{name} in {jnp.dtype(dtype).name}", *tolerance(dtype))


def test_depthwise_kernel_as_large_as_input():
    x = normal(0, (2, 5, 4, 3))
    w = normal(1, (5, 4, 1, 6))  # depthwise, channel multiplier 2, window == input
    check_vjp(lambda x, w: ops.conv2d(x, w, groups=3), lambda x, w: R.conv2d(x, w, groups=3), x, w)
    assert ops.conv2d(x, w, groups=3).shape == (2, 1, 1, 6)


@pytest.mark.parametrize(
    "x_shape,w_shape,kw,expected",
    [
        ((2, 12, 12, 1), (5, 5, 1, 6), dict(padding=2), ("taps", "im2col", "xla")),
        ((2, 9, 9, 6), (5, 5, 6, 16), dict(stride=2), ("xla", "im2col", "im2col")),
        ((2, 9, 9, 12), (3, 3, 12, 8), dict(padding=1), ("xla", "xla", "xla")),
        ((2, 8, 8, 3), (3, 3, 3, 32), dict(padding=1), ("taps", "im2col", "im2col")),
        ((2, 8, 8, 16), (3, 3, 16, 16), dict(stride=2, padding=1), ("phase", "phase", "im2col")),
        ((2, 7, 7, 32), (3, 3, 16, 32), dict(padding="SAME", groups=2),
         ("phase", "phase", "im2col")),
        ((2, 7, 6, 7), (3, 2, 7, 5), dict(stride=(2, 1), padding=((1, 0), (0, 1))),
         ("xla", "im2col", "im2col")),
    ],
)
def test_auto_choice_on_network_shapes(x_shape, w_shape, kw, expected):
    """What "auto" picks on LeNet/CIFAR-like layers, and that it is right there (f64 and f32)."""
    from fcnn.ops.convolution.algorithms import choose

    assert choose(w_shape, kw.get("groups", 1), x_shape[1:3]) == expected
    for dtype in (jnp.float64, jnp.float32):
        x, w = normal(0, x_shape, dtype), normal(1, w_shape, dtype)
        check_vjp(lambda x, w: ops.conv2d(x, w, **kw), lambda x, w: R.conv2d(x, w, **kw), x, w)


def test_auto_keeps_xla_dk_when_one_images_patches_outgrow_the_cache():
    from fcnn.ops.convolution.algorithms import IM2COL_CHUNK_BYTES, choose

    assert choose((3, 3, 64, 64), 1, (32, 32)) == ("phase", "phase", "im2col")  # 2.4 MB
    assert 224 * 224 * 9 * 64 * 4 > 2 * IM2COL_CHUNK_BYTES
    assert choose((3, 3, 64, 64), 1, (224, 224)) == ("phase", "phase", "xla")  # VGG block 1
    assert choose((5, 5, 6, 16), 1, (14, 14)) == ("xla", "im2col", "im2col")  # LeNet c2
    assert choose((5, 5, 6, 16), 1, (224, 224)) == ("xla", "im2col", "xla")


def test_im2col_dk_chunk_size_prefers_a_divisor_of_the_batch():
    from fcnn.ops.convolution.algorithms import _chunk_size

    # CIFAR net at batch 128: caps 27 / 2 / 10 / 5 images -> 16 / 2 / 8 / 4, no padding
    assert [_chunk_size(128, c) for c in (27, 2, 10, 5)] == [16, 2, 8, 4]
    assert _chunk_size(5, 3) == 3  # 5 is prime: chunks of 3, the last padded
    assert _chunk_size(6, 4) == 3 and _chunk_size(1, 1) == 1


def test_im2col_dk_chunks_the_batch_and_pads_the_last_chunk():
    """Small chunk size: 5 images in chunks of 3 (the last padded with a zero image)."""
    from fcnn.ops.convolution import algorithms as algo

    x, g = normal(0, (5, 6, 6, 3), jnp.float64), normal(1, (5, 6, 6, 4), jnp.float64)
    want = R.conv2d_grad_kernel(x, g, (3, 3, 3, 4), padding=1)
    per_image = 6 * 6 * 9 * 3 * 8
    saved = algo.IM2COL_CHUNK_BYTES
    try:
        algo.IM2COL_CHUNK_BYTES = 3 * per_image
        def dk(x, g):
            return ops.conv2d_grad_kernel(x, g, (3, 3, 3, 4), padding=1, algorithm="im2col")

        got = jax.jit(dk)(x, g)
        with ops.using_binding("custom_vjp"):  # its jaxpr shows the computation itself (a
            jaxpr = str(jax.make_jaxpr(lambda x, g: dk(x, g))(x, g))  # fresh trace: new function
        lowered = jax.jit(dk).lower(x, g).as_text()  # a primitive's computation: when lowered
        batched = jax.vmap(dk)(jnp.stack([x, 2 * x]), jnp.stack([g, g]))  # vmap of the scan
    finally:
        algo.IM2COL_CHUNK_BYTES = saved
    assert "scan" in jaxpr and "length=2" in jaxpr and "stablehlo.while" in lowered
    assert_close(got, want, "chunked im2col dK", rtol=1e-12, atol=1e-12)
    assert_close(batched[1], 2 * want, "vmapped chunked dK", rtol=1e-12, atol=1e-12)


@algorithms
@pytest.mark.parametrize("cin", [5, 6, 9])
@pytest.mark.parametrize("stride", [1, 2])
def test_many_input_channels_dx(cin, stride, algorithm):
    """dX with 5-9 input channels in one group at strides 1 and 2: fixed cases beside the
    sweep's random ones (it draws up to 9 per group, one past the taps broadcast limit)."""
    dtype = dtype_for(algorithm)
    x, w = normal(0, (2, 7, 6, cin), dtype), normal(1, (3, 3, cin, 4), dtype)
    kw = dict(stride=stride, padding=1, algorithm=algorithm)
    g = normal(2, ops.conv2d(x, w, **kw).shape, dtype)
    check_vjp(
        lambda g, w: ops.conv2d_grad_input(g, w, x.shape, **kw),
        lambda g, w: R.conv2d_grad_input(g, w, x.shape, stride=stride, padding=1),
        g, w,
    )


@pytest.mark.parametrize("cig,groups", [(TAPS_BROADCAST_MAX, 2), (TAPS_BROADCAST_MAX + 1, 3)])
def test_taps_forward_with_groups(cig, groups):
    """The taps forward with groups > 1 on both sides of TAPS_BROADCAST_MAX: broadcast
    multiply-adds per input channel (C_in/groups <= it) and one GEMM per tap (above). Value and
    VJP in float64 and float32, and dX's VJP, whose d/dg is the taps forward again."""
    kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=groups)
    ours = partial(ops.conv2d, **kw, algorithm="taps")
    for dtype in (jnp.float64, jnp.float32):
        x = normal(0, (2, 7, 6, cig * groups), dtype)
        w = normal(1, (3, 2, cig, 3 * groups), dtype)
        check_vjp(ours, partial(R.conv2d, **kw), x, w, normal(2, (3 * groups,), dtype))
    gemm = "dot_general" in jax.jit(ours).lower(x, w).as_text()  # the computation, as lowered
    assert gemm == (cig > TAPS_BROADCAST_MAX), "not the taps path this case is for"
    x, w = x.astype(jnp.float64), w.astype(jnp.float64)
    check_vjp(lambda g, w: ops.conv2d_grad_input(g, w, x.shape, **kw, algorithm="taps"),
              lambda g, w: R.conv2d_grad_input(g, w, x.shape, **kw),
              normal(3, ours(x, w).shape), w)


def test_lowers_for_cpu_gpu_and_tpu():
    """The rules (including the CPU-only conv arrangement) export for every platform."""
    from jax import export

    x, w = normal(0, (2, 8, 8, 16), jnp.float32), normal(1, (3, 3, 16, 16), jnp.float32)

    def loss(x, w):
        y = ops.conv2d(x, w, stride=2, padding=1)
        y = ops.max_pool2d(ops.relu(ops.conv2d(y, w, padding=1)), 2)
        return jnp.sum(ops.avg_pool2d(y, 2) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    exported = export.export(grad, platforms=("cpu", "cuda", "tpu"))(x, w)
    assert exported.platforms == ("cpu", "cuda", "tpu")
    got = exported.call(x, w)
    want = jax.grad(loss, argnums=(0, 1))(x, w)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, "exported grad")
