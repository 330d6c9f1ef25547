"""pad: the four modes' hand-written rules against autodiff of `jnp.pad`, and PyTorch's F.pad."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import ops
from fcnn import reference as R
from fcnn.testing import check_op, check_vjp
from tests.strategies import normal

MODES = ["zeros", "reflect", "replicate", "circular"]
FWD = ["fwd", "rev"] if ops.binding() == "primitive" else ["rev"]
# one case per rank: (shape, padding); every pad below each axis' reflect limit
CASES = [((2, 7, 3), ((2, 3),)),  # 1-D, asymmetric
         ((2, 5, 6, 3), ((1, 2), 3)),  # 2-D, a pair and an int
         ((1, 4, 3, 5, 2), 1)]  # 3-D, one int for every side


# every mode in 2-D, reflect and replicate in 1-D, zeros and circular in 3-D (PyTorch checks
# every pair below); the thorough profile every pair
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
RUN = {0: ("reflect", "replicate"), 1: tuple(MODES), 2: ("zeros", "circular")}
PAIRS = [(mode, *case) for mode in MODES for i, case in enumerate(CASES)
         if THOROUGH or mode in RUN[i]]


@pytest.mark.parametrize("mode,shape,padding", PAIRS)
def test_every_mode_and_rank_against_the_oracle(mode, shape, padding):
    """Value, VJP, JVP, second order, finite differences, the adjoint identity, jit and vmap
    (`check_op`) against autodiff of `jnp.pad`."""
    x = normal(0, shape)
    check_op(lambda x: ops.pad(x, padding, mode), x,
             reference=lambda x: R.pad(x, padding, mode), modes=FWD)


@pytest.mark.parametrize("mode", MODES)
def test_float32_and_a_pad_as_large_as_each_mode_allows(mode):
    n = 4
    most = {"zeros": 6, "reflect": n - 1, "replicate": 6, "circular": n}[mode]
    x = normal(1, (3, n, n + 1, 2), jnp.float32)
    padding = ((most, 0), (0, most))
    check_vjp(lambda x: ops.pad(x, padding, mode), lambda x: R.pad(x, padding, mode), x)


def test_the_transpose_folds_the_border_back_by_hand():
    """1-D, n = 4, pads (2, 1), all-ones cotangent: how many output cells copy each input."""
    x = jnp.arange(4.0).reshape(1, 4, 1)
    want = {"zeros": [1, 1, 1, 1], "reflect": [1, 2, 3, 1],  # [2 1 | 0 1 2 3 | 2]
            "replicate": [3, 1, 1, 2],  # [0 0 | 0 1 2 3 | 3]
            "circular": [2, 1, 2, 2]}  # [2 3 | 0 1 2 3 | 0]
    for mode, counts in want.items():
        y, vjp = jax.vjp(lambda x: ops.pad(x, ((2, 1),), mode), x)
        np.testing.assert_array_equal(y[0, :, 0], R.pad(x, ((2, 1),), mode)[0, :, 0])
        np.testing.assert_array_equal(vjp(jnp.ones_like(y))[0][0, :, 0], counts, err_msg=mode)


def test_no_padding_is_the_input_and_dtypes_are_kept():
    x = normal(2, (2, 3, 3, 1), jnp.float32)
    assert ops.pad(x, 0, "reflect") is x
    for dtype in (jnp.bfloat16, jnp.float16):
        y, vjp = jax.vjp(lambda x: ops.pad(x, 1, "circular"), x.astype(dtype))
        assert y.dtype == dtype and vjp(y)[0].dtype == dtype


@pytest.mark.parametrize("args,error,match", [
    (((2, 4, 4, 1), 1, "mirror"), ValueError, "`mode` must be one of"),
    (((2, 4, 4, 1), 4, "reflect"), ValueError, "smaller than the axis size"),
    (((2, 4, 4, 1), 5, "circular"), ValueError, "at most the axis size"),
    (((2, 4, 4, 1), -1, "zeros"), ValueError, "non-negative"),
    (((2, 4, 4, 1), (1, 2, 3), "zeros"), ValueError, "one entry per spatial axis"),
    (((2, 4, 4, 1), ((1, 2, 3), 1), "zeros"), ValueError, r"\(lo, hi\)"),
    (((2, 4, 4, 1), 1.5, "zeros"), TypeError, "holds ints"),
    (((4, 1), 1, "zeros"), ValueError, "at least one spatial axis"),
])
def test_bad_arguments_are_refused_with_a_message(args, error, match):
    shape, padding, mode = args
    with pytest.raises(error, match=match):
        ops.pad(jnp.zeros(shape), padding, mode)
    with pytest.raises(TypeError, match="floating-point"):
        ops.pad(jnp.zeros((2, 4, 4, 1), jnp.int32), 1)


@pytest.mark.parametrize("mode", MODES)
def test_against_pytorch(mode):
    """PyTorch's F.pad ("constant" for zeros) in float64 on NCHW (1-D and 2-D) and NCDHW
    (3-D; "reflect" in 3-D needs PyTorch >= 2.1), value and gradient at rtol 1e-10."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for shape, padding in CASES:
        x = np.asarray(normal(3, shape))
        rank = x.ndim - 2
        pads = [(p, p) if isinstance(p, int) else tuple(p)
                for p in ((padding,) * rank if isinstance(padding, int) else padding)]
        flat = [v for lo_hi in reversed(pads) for v in lo_hi]  # F.pad: last axis first
        xt = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
        yt = F.pad(xt, flat, mode="constant" if mode == "zeros" else mode)
        u = np.asarray(normal(4, (shape[0], *(n + lo + hi for n, (lo, hi) in
                                              zip(shape[1:-1], pads)), shape[-1])))
        (gt,) = torch.autograd.grad(yt, xt, torch.tensor(np.moveaxis(u, -1, 1)))
        y, vjp = jax.vjp(lambda x: ops.pad(x, padding, mode), jnp.asarray(x))
        np.testing.assert_allclose(y, np.moveaxis(yt.detach().numpy(), 1, -1), rtol=1e-10)
        np.testing.assert_allclose(vjp(jnp.asarray(u))[0], np.moveaxis(gt.numpy(), 1, -1),
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, "SAME", ((2, 0), (1, 1))])
def test_conv2d_layer_padding_mode(mode, padding):
    """Conv2D(padding_mode=...) is the convolution of the padded input with no padding: the
    same output shape as "zeros", batched and unbatched, its gradient through pad's rules;
    the config names the mode only when it is not "zeros"."""
    from fcnn import layers as L

    layer = L.Conv2D(4, 3, padding=padding, padding_mode=mode)
    plain = L.Conv2D(4, 3, padding=padding)
    params, shape = layer.init(jax.random.key(0), (6, 7, 2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    assert shape == plain.init(jax.random.key(0), (6, 7, 2))[1]
    assert layer.info.config["padding_mode"] == mode and "padding_mode" not in plain.info.config
    x = normal(5, (2, 6, 7, 2))
    pads = {1: ((1, 1), (1, 1)), "SAME": ((1, 1), (1, 1)), ((2, 0), (1, 1)): ((2, 0), (1, 1))}
    want = lambda p, x: R.conv2d(R.pad(x, pads[padding], mode), p["w"], p["b"])
    check_vjp(lambda p, x: layer.apply(p, x), want, params, x)
    np.testing.assert_allclose(layer.apply(params, x[0]), want(params, x)[0], rtol=1e-12)


def test_conv2d_layer_padding_mode_against_pytorch():
    torch = pytest.importorskip("torch")
    from fcnn import layers as L

    layer = L.Conv2D(3, 3, padding=1, padding_mode="reflect")
    params, _ = layer.init(jax.random.key(1), (5, 6, 2))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = np.asarray(normal(6, (2, 5, 6, 2)))
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect").double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(np.asarray(params["w"]).transpose(3, 2, 0, 1)))
        conv.bias.copy_(torch.tensor(np.asarray(params["b"])))
    want = conv(torch.tensor(np.moveaxis(x, -1, 1))).detach().numpy()
    np.testing.assert_allclose(layer.apply(params, jnp.asarray(x)), np.moveaxis(want, 1, -1),
                               rtol=1e-10)
