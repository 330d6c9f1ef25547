"""pixel_shuffle / pixel_unshuffle: permutations with written rules, against the oracle's index
arithmetic (a gather) and PyTorch's PixelShuffle."""

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
CASES = [((2, 5, 6), 3), ((2, 3, 4, 8), 2), ((1, 2, 3, 2, 16), 2), ((2, 2, 2, 27), 3)]


THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


# 1-D and 3-D in every run (PyTorch checks 2-D below); the thorough profile every case
@pytest.mark.parametrize("shape,r", [c for i, c in enumerate(CASES) if THOROUGH or i in (0, 2)])
def test_both_maps_against_the_oracle(shape, r):
    """Value, VJP, JVP, second order, finite differences, the adjoint identity, jit and vmap, in
    1-D, 2-D and 3-D; and each map is the other's inverse."""
    x = normal(0, shape)
    check_op(lambda x: ops.pixel_shuffle(x, r), x, reference=lambda x: R.pixel_shuffle(x, r),
             modes=FWD)
    y = ops.pixel_shuffle(x, r)
    check_op(lambda y: ops.pixel_unshuffle(y, r), y,
             reference=lambda y: R.pixel_unshuffle(y, r), modes=FWD)
    np.testing.assert_array_equal(ops.pixel_unshuffle(y, r), x)


def test_against_pytorch_and_by_hand():
    torch = pytest.importorskip("torch")
    x = np.asarray(normal(1, (2, 3, 4, 3 * 4)))
    want = torch.nn.functional.pixel_shuffle(torch.tensor(np.moveaxis(x, -1, 1)), 2).numpy()
    np.testing.assert_array_equal(ops.pixel_shuffle(x, 2), np.moveaxis(want, 1, -1))
    back = torch.nn.functional.pixel_unshuffle(torch.tensor(want), 2).numpy()
    np.testing.assert_array_equal(ops.pixel_unshuffle(jnp.asarray(np.moveaxis(want, 1, -1)), 2),
                                  np.moveaxis(back, 1, -1))
    # 1-D by hand: channels (c, o) = c*2 + o -> position 2s + o
    x1 = jnp.arange(8.0).reshape(1, 2, 4)  # s = 0: [0 1 2 3], s = 1: [4 5 6 7]
    np.testing.assert_array_equal(ops.pixel_shuffle(x1, 2)[0], [[0, 2], [1, 3], [4, 6], [5, 7]])


def test_layers_shapes_and_errors():
    layer = L.PixelShuffle(2)
    params, shape = layer.init(jax.random.key(0), (3, 4, 8))
    assert shape == (6, 8, 2)
    x = normal(2, (3, 4, 8))
    np.testing.assert_array_equal(layer.apply(params, x), ops.pixel_shuffle(x[None], 2)[0])
    assert L.PixelUnshuffle(2, spatial=1).init(jax.random.key(0), (6, 5))[1] == (3, 10)
    with pytest.raises(ValueError, match="divisible by factor"):
        L.PixelShuffle(2).init(jax.random.key(0), (3, 4, 6))
    with pytest.raises(ValueError, match="divisible by the factor"):
        L.PixelUnshuffle(2).init(jax.random.key(0), (3, 4, 6))
    with pytest.raises(ValueError, match="divisible by factor"):
        ops.pixel_shuffle(jnp.zeros((1, 2, 2, 3)), 2)
    with pytest.raises(ValueError, match="divisible by factor 2"):
        ops.pixel_unshuffle(jnp.zeros((1, 3, 2, 3)), 2)
    with pytest.raises(ValueError, match="`factor` must be"):
        ops.pixel_shuffle(jnp.zeros((1, 2, 2, 4)), 0)
    with pytest.raises(TypeError, match="floating-point"):
        ops.pixel_shuffle(jnp.zeros((1, 2, 2, 4), jnp.int32), 2)
