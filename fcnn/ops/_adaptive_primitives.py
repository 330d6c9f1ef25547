"""Adaptive average pooling as JAX primitives with hand-written JVP, transpose and batching rules
(the "primitive" binding; `fcnn.ops._binding`). The computations are adaptive_pool.py's:

    pool(x)      linear; JVP pool(ẋ);      transpose: unpool(ct)
    unpool(ct)   linear; JVP unpool(ċt);   transpose: pool(u)

Batching: per example, so a vmapped axis folds into the batch N (`_bilinear.linear_pair`).
"""

from __future__ import annotations

from fcnn.ops._bilinear import linear_pair
from fcnn.ops.adaptive_pool import _pool_impl, _unpool_impl

pool, unpool = linear_pair(
    "fcnn_adaptive_avg_pool", "fcnn_adaptive_avg_pool_t", _pool_impl, _unpool_impl,
    lambda x, cfg: (x.shape[0], *cfg.out_sizes, x.shape[-1]),
    lambda ct, cfg: (ct.shape[0], *cfg.in_sizes, ct.shape[-1]), "cfg")
