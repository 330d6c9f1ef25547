"""Adaptive average pooling as JAX primitives with hand-written JVP, transpose and batching rules
(the "primitive" binding; `fcnn.ops._binding`). The computations are adaptive_pool.py's:

    pool(x)      linear; JVP pool(ẋ);      transpose: unpool(ct)
    unpool(ct)   linear; JVP unpool(ċt);   transpose: pool(u)

Batching: per example, so a vmapped axis folds into the batch N.
"""

from __future__ import annotations

from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from fcnn.ops import adaptive_pool as mod
from fcnn.ops._bilinear import ShapedArray, front, into_n, out_of_n, register, zero_like, zero_or

pool_p = Primitive("fcnn_adaptive_avg_pool")  # (x; cfg) -> y
unpool_p = Primitive("fcnn_adaptive_avg_pool_t")  # (ct; cfg) -> dx


def pool(x, cfg):
    return pool_p.bind(x, cfg=cfg)


def unpool(ct, cfg):
    return unpool_p.bind(ct, cfg=cfg)


def _sized(a, sizes):
    return ShapedArray((a.shape[0], *sizes, a.shape[-1]), a.dtype)


register(pool_p, lambda x, *, cfg: mod._pool_impl(x, cfg),
         lambda x, *, cfg: _sized(x, cfg.out_sizes), ("cfg",))
register(unpool_p, lambda ct, *, cfg: mod._unpool_impl(ct, cfg),
         lambda ct, *, cfg: _sized(ct, cfg.in_sizes), ("cfg",))


def _linear_jvp(bind):
    def jvp(primals, tangents, *, cfg):
        out = bind(primals[0], cfg=cfg)
        t = tangents[0]
        return out, zero_like(out) if type(t) is ad.Zero else bind(t, cfg=cfg)

    return jvp


ad.primitive_jvps[pool_p] = _linear_jvp(pool_p.bind)
ad.primitive_jvps[unpool_p] = _linear_jvp(unpool_p.bind)
ad.primitive_transposes[pool_p] = lambda ct, x, *, cfg: [zero_or(ct, x, lambda: unpool(ct, cfg))]
ad.primitive_transposes[unpool_p] = lambda ct, g, *, cfg: [zero_or(ct, g, lambda: pool(ct, cfg))]


def _batcher(bind):
    def rule(args, dims, *, cfg):
        (a,), (d,) = args, dims
        a = front(a, d)
        return out_of_n(bind(into_n(a), cfg=cfg), a.shape[0]), 0

    return rule


batching.primitive_batchers[pool_p] = _batcher(pool_p.bind)
batching.primitive_batchers[unpool_p] = _batcher(unpool_p.bind)
