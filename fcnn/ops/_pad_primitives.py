"""Padding as JAX primitives with hand-written JVP, transpose and batching rules (the "primitive"
binding; `fcnn.ops._binding`). The computations are pad.py's (`_pad_impl`, `_fold_impl`):

    pad(x)      linear; JVP pad(ẋ);     transpose: fold(ct)
    fold(ct)    linear; JVP fold(ċt);   transpose: pad(u)

Batching: padding touches the spatial axes only, so a vmapped axis folds into the batch N
(`_bilinear.linear_pair`).
"""

from __future__ import annotations

from fcnn.ops._bilinear import linear_pair
from fcnn.ops.pad import _fold_impl, _pad_impl


def _shape(a, cfg, sign):
    spatial = tuple(n + sign * (lo + hi) for n, (lo, hi) in zip(a.shape[1:-1], cfg.pads))
    return (a.shape[0], *spatial, a.shape[-1])


pad, fold = linear_pair("fcnn_pad", "fcnn_pad_t", _pad_impl, _fold_impl,
                        lambda x, cfg: _shape(x, cfg, 1), lambda ct, cfg: _shape(ct, cfg, -1),
                        "cfg")
