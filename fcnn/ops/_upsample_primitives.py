"""Upsampling as JAX primitives with hand-written JVP, transpose and batching rules (the
"primitive" binding; `fcnn.ops._binding`). The computations are upsample.py's:

    up(x)      linear; JVP up(ẋ);      transpose: up_t(ct)
    up_t(ct)   linear; JVP up_t(ċt);   transpose: up(u)

Batching: per example, so a vmapped axis folds into the batch N (`_bilinear.linear_pair`).
"""

from __future__ import annotations

from fcnn.ops._bilinear import linear_pair
from fcnn.ops.upsample import _upsample_impl, _upsample_t_impl

up, up_t = linear_pair(
    "fcnn_upsample", "fcnn_upsample_t", _upsample_impl, _upsample_t_impl,
    lambda x, cfg: (x.shape[0], *cfg.out_sizes, x.shape[-1]),
    lambda ct, cfg: (ct.shape[0], *cfg.in_sizes, ct.shape[-1]), "cfg")
