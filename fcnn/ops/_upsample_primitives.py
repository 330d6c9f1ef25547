"""Upsampling as JAX primitives with hand-written JVP, transpose and batching rules (the
"primitive" binding; `fcnn.ops._binding`). The computations are upsample.py's:

    up(x)      linear; JVP up(ẋ);      transpose: up_t(ct)
    up_t(ct)   linear; JVP up_t(ċt);   transpose: up(u)

Batching: per example, so a vmapped axis folds into the batch N.
"""

from __future__ import annotations

from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from fcnn.ops import upsample as mod
from fcnn.ops._bilinear import ShapedArray, front, into_n, out_of_n, register, zero_like, zero_or

up_p = Primitive("fcnn_upsample")  # (x; cfg) -> y
up_t_p = Primitive("fcnn_upsample_t")  # (ct; cfg) -> dx


def up(x, cfg):
    return up_p.bind(x, cfg=cfg)


def up_t(ct, cfg):
    return up_t_p.bind(ct, cfg=cfg)


def _sized(a, sizes):
    return ShapedArray((a.shape[0], *sizes, a.shape[-1]), a.dtype)


register(up_p, lambda x, *, cfg: mod._upsample_impl(x, cfg),
         lambda x, *, cfg: _sized(x, cfg.out_sizes), ("cfg",))
register(up_t_p, lambda ct, *, cfg: mod._upsample_t_impl(ct, cfg),
         lambda ct, *, cfg: _sized(ct, cfg.in_sizes), ("cfg",))


def _linear_jvp(bind):
    def jvp(primals, tangents, *, cfg):
        out = bind(primals[0], cfg=cfg)
        t = tangents[0]
        return out, zero_like(out) if type(t) is ad.Zero else bind(t, cfg=cfg)

    return jvp


ad.primitive_jvps[up_p] = _linear_jvp(up_p.bind)
ad.primitive_jvps[up_t_p] = _linear_jvp(up_t_p.bind)
ad.primitive_transposes[up_p] = lambda ct, x, *, cfg: [zero_or(ct, x, lambda: up_t(ct, cfg))]
ad.primitive_transposes[up_t_p] = lambda ct, g, *, cfg: [zero_or(ct, g, lambda: up(ct, cfg))]


def _batcher(bind):
    def rule(args, dims, *, cfg):
        (a,), (d,) = args, dims
        a = front(a, d)
        return out_of_n(bind(into_n(a), cfg=cfg), a.shape[0]), 0

    return rule


batching.primitive_batchers[up_p] = _batcher(up_p.bind)
batching.primitive_batchers[up_t_p] = _batcher(up_t_p.bind)
