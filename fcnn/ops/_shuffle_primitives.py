"""Pixel shuffle as JAX primitives with hand-written JVP, transpose and batching rules (the
"primitive" binding; `fcnn.ops._binding`). The computations are shuffle.py's:

    shuffle(x)     a permutation; JVP shuffle(ẋ);     transpose: unshuffle(ct)
    unshuffle(y)   its inverse;   JVP unshuffle(ẏ);   transpose: shuffle(ct)

Batching: a vmapped axis folds into the batch N (`_bilinear.linear_pair`).
"""

from __future__ import annotations

from fcnn.ops._bilinear import linear_pair
from fcnn.ops.shuffle import _shuffle_impl, _unshuffle_impl


def _shuffled(x, r):
    d = x.ndim - 2
    return (x.shape[0], *(s * r for s in x.shape[1:-1]), x.shape[-1] // r ** d)


def _unshuffled(y, r):
    d = y.ndim - 2
    return (y.shape[0], *(s // r for s in y.shape[1:-1]), y.shape[-1] * r ** d)


shuffle, unshuffle = linear_pair("fcnn_pixel_shuffle", "fcnn_pixel_unshuffle",
                                 _shuffle_impl, _unshuffle_impl,
                                 _shuffled, _unshuffled, "r")
