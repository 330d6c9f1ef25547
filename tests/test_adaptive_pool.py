"""adaptive_avg_pool: PyTorch's bins, hand-written rules against the oracle (slices and means)
and PyTorch's AdaptiveAvgPool1d/2d/3d."""

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
CASES = [((2, 10, 3), 4),  # 1-D, bins sharing cells
         ((2, 7, 9, 3), (3, 5)),  # 2-D, neither divides
         ((2, 8, 6, 2), (4, 3)),  # 2-D, both tile (reshape and mean)
         ((2, 3, 4, 2), 5),  # more cells out than in: cells repeat
         ((1, 4, 5, 6, 2), (3, None, 4))]  # 3-D, one axis kept


THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


# shared cells (1-D and 2-D), repeats and a kept axis (3-D) in every run; the thorough profile
# adds the tiling case and the 2-D repeat (PyTorch checks every case below)
@pytest.mark.parametrize("shape,size", [c for i, c in enumerate(CASES)
                                        if THOROUGH or i in (0, 1, 4)])
def test_against_the_oracle(shape, size):
    x = normal(0, shape)
    check_op(lambda x: ops.adaptive_avg_pool(x, size), x,
             reference=lambda x: R.adaptive_avg_pool(x, size), modes=FWD)


def test_against_pytorch_value_and_gradient():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    pools = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    for shape, size in CASES:
        x = np.asarray(normal(1, shape))
        xt = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
        yt = pools[x.ndim - 2](xt, size)
        u = np.asarray(normal(2, np.moveaxis(yt.detach().numpy(), 1, -1).shape))
        (gt,) = torch.autograd.grad(yt, xt, torch.tensor(np.moveaxis(u, -1, 1)))
        y, vjp = jax.vjp(lambda x: ops.adaptive_avg_pool(x, size), jnp.asarray(x))
        np.testing.assert_allclose(y, np.moveaxis(yt.detach().numpy(), 1, -1), rtol=1e-10)
        np.testing.assert_allclose(vjp(jnp.asarray(u))[0], np.moveaxis(gt.numpy(), 1, -1),
                                   rtol=1e-10, atol=1e-12)


def test_a_nan_stays_in_its_bins_by_hand():
    """n = 5 -> m = 3: bins [0, 2), [1, 4), [3, 5). A NaN at cell 0 reaches bin 0 only, in the
    value and the gradient; cell 3 belongs to bins 1 and 2."""
    x = jnp.array([np.nan, 1.0, 2.0, 3.0, 4.0]).reshape(1, 5, 1)
    y, vjp = jax.vjp(lambda x: ops.adaptive_avg_pool(x, 3), x)
    np.testing.assert_array_equal(np.isnan(y[0, :, 0]), [True, False, False])
    np.testing.assert_allclose(y[0, 1:, 0], [2.0, 3.5])
    dx = vjp(jnp.array([np.nan, 3.0, 2.0]).reshape(1, 3, 1))[0][0, :, 0]
    np.testing.assert_array_equal(np.isnan(dx), [True, True, False, False, False])
    np.testing.assert_allclose(dx[2:], [1.0, 1.0 + 1.0, 1.0])


def test_layers_and_errors():
    layer = L.AdaptiveAvgPool2D((3, None))
    params, shape = layer.init(jax.random.key(0), (7, 9, 2))
    assert shape == (3, 9, 2)
    x = normal(3, (7, 9, 2))
    np.testing.assert_allclose(layer.apply(params, x), R.adaptive_avg_pool(x[None], (3, 9))[0])
    assert L.AdaptiveAvgPool1D(2).init(jax.random.key(0), (6, 4))[1] == (2, 4)
    assert L.AdaptiveAvgPool3D(1).init(jax.random.key(0), (2, 3, 4, 5))[1] == (1, 1, 1, 5)
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        ops.adaptive_avg_pool(jnp.zeros((1, 4, 4, 1)), (2, 2, 2))
    with pytest.raises(ValueError, match="`output_size` must be"):
        ops.adaptive_avg_pool(jnp.zeros((1, 4, 4, 1)), 0)
    with pytest.raises(ValueError, match="empty"):
        ops.adaptive_avg_pool(jnp.zeros((1, 0, 4, 1)), 2)
    with pytest.raises(ValueError, match="rank 3"):
        L.AdaptiveAvgPool2D(2).init(jax.random.key(0), (4, 4))
