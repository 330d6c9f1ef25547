"""upsample: nearest and linear interpolation with written rules, against the oracle and
torch.nn.functional.interpolate (every size rule and both align_corners)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import layers as L
from fcnn import ops
from fcnn import reference as R
from fcnn.testing import check_op
from tests.strategies import normal

FWD = ["fwd", "rev"] if ops.binding() == "primitive" else ["rev"]
SHAPES = [(2, 5, 3), (2, 4, 5, 2), (1, 3, 4, 2, 2)]
SIZES = [dict(scale=2), dict(scale=1.5), dict(size=3)]  # integer, fractional, down
METHODS = [("nearest", None), ("linear", False), ("linear", True)]


# each rank once, each method once, each size rule once (PyTorch checks every combination
# below); the thorough profile each rank with each method, the size rules rotating
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
ORACLE = [(shape, method, align, SIZES[(i + j) % 3]) for i, shape in enumerate(SHAPES)
          for j, (method, align) in enumerate(METHODS) if THOROUGH or i == j]


@pytest.mark.parametrize("shape,method,align,kw", ORACLE)
def test_against_the_oracle(shape, method, align, kw):
    """Value, VJP, JVP, second order, finite differences, the adjoint identity, jit, vmap."""
    x = normal(0, shape)
    check_op(lambda x: ops.upsample(x, method=method, align_corners=align, **kw), x,
             reference=lambda x: R.upsample(x, method=method, align_corners=align, **kw),
             modes=FWD, directions=1)


@pytest.mark.parametrize("shape", SHAPES)
def test_against_pytorch(shape):
    """Value and gradient in float64 at rtol 1e-10 for every size rule, method and
    align_corners, 1-D (linear), 2-D (bilinear), 3-D (trilinear)."""
    torch = pytest.importorskip("torch")
    d = len(shape) - 2
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[d]
    for kw in [*SIZES, dict(scale=3), dict(scale=2.7), dict(size=7)]:
        for method, align in METHODS:
            x = np.asarray(normal(1, shape))
            xt = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
            tkw = (dict(scale_factor=kw["scale"]) if "scale" in kw
                   else dict(size=(kw["size"],) * d))
            yt = torch.nn.functional.interpolate(
                xt, mode="nearest" if method == "nearest" else mode, align_corners=align, **tkw)
            y, vjp = jax.vjp(lambda x: ops.upsample(x, method=method, align_corners=align, **kw),
                             jnp.asarray(x))
            np.testing.assert_allclose(y, np.moveaxis(yt.detach().numpy(), 1, -1), rtol=1e-10,
                                       atol=1e-12, err_msg=f"{kw} {method} {align}")
            u = np.asarray(normal(2, y.shape))
            (gt,) = torch.autograd.grad(yt, xt, torch.tensor(np.moveaxis(u, -1, 1)))
            np.testing.assert_allclose(vjp(jnp.asarray(u))[0], np.moveaxis(gt.numpy(), 1, -1),
                                       rtol=1e-10, atol=1e-12, err_msg=f"{kw} {method} {align}")


def test_by_hand():
    x = jnp.array([0.0, 10.0]).reshape(1, 2, 1)
    np.testing.assert_array_equal(ops.upsample(x, 2)[0, :, 0], [0, 0, 10, 10])
    # half-pixel centres: sources -0.25 -> 0, 0.25, 0.75, 1.25 -> i0 = 1
    np.testing.assert_allclose(ops.upsample(x, 2, method="linear")[0, :, 0], [0, 2.5, 7.5, 10])
    np.testing.assert_allclose(ops.upsample(x, size=3, method="linear",
                                            align_corners=True)[0, :, 0], [0, 5, 10])
    # the transpose of nearest x2: each cell gets the sum of its two copies
    dx = jax.vjp(lambda x: ops.upsample(x, 2), x)[1](jnp.arange(4.0).reshape(1, 4, 1))[0]
    np.testing.assert_array_equal(dx[0, :, 0], [1, 5])


def test_layer_and_errors():
    layer = L.Upsample(2, method="bilinear")
    params, shape = layer.init(jax.random.key(0), (3, 4, 2))
    assert shape == (6, 8, 2)
    x = normal(3, (3, 4, 2))
    np.testing.assert_allclose(layer.apply(params, x),
                               R.upsample(x[None], 2, method="linear", align_corners=False)[0])
    assert L.Upsample(size=(5,), spatial=1).init(jax.random.key(0), (3, 2))[1] == (5, 2)
    z = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="exactly one of"):
        ops.upsample(z)
    with pytest.raises(ValueError, match="exactly one of"):
        ops.upsample(z, 2, size=8)
    with pytest.raises(ValueError, match="needs 3 spatial axes"):
        ops.upsample(z, 2, method="trilinear")
    with pytest.raises(ValueError, match="linear interpolation only"):
        ops.upsample(z, 2, align_corners=True)
    with pytest.raises(ValueError, match="`method` must be one of"):
        ops.upsample(z, 2, method="cubic")
    with pytest.raises(ValueError, match="empty axis"):
        ops.upsample(z, 0.1)
