"""Padding as JAX primitives with hand-written JVP, transpose and batching rules (the "primitive"
binding; `fcnn.ops._binding`). The computations are pad.py's (`_pad_impl`, `_fold_impl`):

    pad(x)      linear; JVP pad(ẋ);     transpose: fold(ct)
    fold(ct)    linear; JVP fold(ċt);   transpose: pad(u)

Batching: padding touches the spatial axes only, so a vmapped axis folds into the batch N.
"""

from __future__ import annotations

from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from fcnn.ops import pad as pad_mod
from fcnn.ops._bilinear import ShapedArray, front, into_n, out_of_n, register, zero_like, zero_or

pad_p = Primitive("fcnn_pad")  # (x; cfg) -> y
fold_p = Primitive("fcnn_pad_t")  # (ct; cfg) -> dx, the transpose


def pad(x, cfg):
    return pad_p.bind(x, cfg=cfg)


def fold(ct, cfg):
    return fold_p.bind(ct, cfg=cfg)


def _shape(a, cfg, sign):
    spatial = tuple(n + sign * (lo + hi) for n, (lo, hi) in zip(a.shape[1:-1], cfg.pads))
    return ShapedArray((a.shape[0], *spatial, a.shape[-1]), a.dtype)


register(pad_p, lambda x, *, cfg: pad_mod._pad_impl(x, cfg),
         lambda x, *, cfg: _shape(x, cfg, 1), ("cfg",))
register(fold_p, lambda ct, *, cfg: pad_mod._fold_impl(ct, cfg),
         lambda ct, *, cfg: _shape(ct, cfg, -1), ("cfg",))


def _linear_jvp(bind):
    def jvp(primals, tangents, *, cfg):
        out = bind(primals[0], cfg=cfg)
        t = tangents[0]
        return out, zero_like(out) if type(t) is ad.Zero else bind(t, cfg=cfg)

    return jvp


ad.primitive_jvps[pad_p] = _linear_jvp(pad_p.bind)
ad.primitive_jvps[fold_p] = _linear_jvp(fold_p.bind)
ad.primitive_transposes[pad_p] = lambda ct, x, *, cfg: [zero_or(ct, x, lambda: fold(ct, cfg))]
ad.primitive_transposes[fold_p] = lambda ct, g, *, cfg: [zero_or(ct, g, lambda: pad(ct, cfg))]


def _batcher(bind):
    def rule(args, dims, *, cfg):
        (a,), (d,) = args, dims
        a = front(a, d)  # (K, N, ...) -> (K*N, ...), padded, and back
        return out_of_n(bind(into_n(a), cfg=cfg), a.shape[0]), 0

    return rule


batching.primitive_batchers[pad_p] = _batcher(pad_p.bind)
batching.primitive_batchers[fold_p] = _batcher(fold_p.bind)
