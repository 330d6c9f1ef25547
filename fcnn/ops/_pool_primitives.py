"""Pooling as JAX primitives with hand-written JVP, transpose and batching rules (the "primitive"
binding; `fcnn.ops._binding`). The computations are pool.py's (`_*_impl`), as in its custom_vjp
binding, and so are the relations between the maps:

    avg_pool(x)          linear; JVP avg_pool(x');          transpose: avg_pool_t(ct)
    avg_pool_t(g)        linear; JVP avg_pool_t(g');        transpose: avg_pool(ct)
    max_pool(x)          JVP: max_gather(x, x') — the tangent read at each window's first maximum
    max_gather(x, t)     linear in t (the argmax is piecewise constant in x: d/dx = 0);
                         JVP max_gather(x, t'); transpose: t <- max_scatter(x, ct)
    max_scatter(x, g)    linear in g; JVP max_scatter(x, g'); transpose: g <- max_gather(x, ct)

so reverse mode of max_pool is JAX transposing its JVP: g to each window's first maximum.

Batching: pooling is per example and per channel, so a vmapped axis folds into the batch N (an
operand without it — the x of a tangent basis — is broadcast first).
"""

from __future__ import annotations

from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from fcnn.ops._bilinear import (
    ShapedArray,
    into_n,
    mapped,
    out_of_n,
    register,
    zero_like,
    zero_or,
)
from fcnn.ops.pool import (
    _avg_pool_impl,
    _avg_pool_t_impl,
    _max_gather_impl,
    _max_pool_impl,
    _max_scatter_impl,
    _out_hw,
)

avg_pool_p = Primitive("fcnn_avg_pool")  # (x; cfg) -> y
avg_pool_t_p = Primitive("fcnn_avg_pool_t")  # (g; in_hw, cfg) -> dx
max_pool_p = Primitive("fcnn_max_pool")  # (x; cfg) -> y
max_gather_p = Primitive("fcnn_max_gather")  # (x, t; cfg) -> t at each window's argmax
max_scatter_p = Primitive("fcnn_max_scatter")  # (x, g; cfg) -> g sent to each window's argmax


def avg_pool(x, cfg):
    return avg_pool_p.bind(x, cfg=cfg)


def avg_pool_t(g, in_hw, cfg):
    return avg_pool_t_p.bind(g, in_hw=tuple(in_hw), cfg=cfg)


def max_pool(x, cfg):
    return max_pool_p.bind(x, cfg=cfg)


def max_gather(x, t, cfg):
    return max_gather_p.bind(x, t, cfg=cfg)


def max_scatter(x, g, cfg):
    return max_scatter_p.bind(x, g, cfg=cfg)


def _pooled(x, cfg):
    return ShapedArray((x.shape[0], *_out_hw(x.shape[1:-1], cfg), x.shape[-1]), x.dtype)


register(avg_pool_p, lambda x, *, cfg: _avg_pool_impl(x, cfg), _pooled, ("cfg",))
register(avg_pool_t_p, lambda g, *, in_hw, cfg: _avg_pool_t_impl(g, in_hw, cfg),
         lambda g, *, in_hw, cfg: ShapedArray((g.shape[0], *in_hw, g.shape[-1]), g.dtype),
         ("in_hw", "cfg"))
register(max_pool_p, lambda x, *, cfg: _max_pool_impl(x, cfg), _pooled, ("cfg",))
register(max_gather_p, lambda x, t, *, cfg: _max_gather_impl(x, t, cfg),
         lambda x, t, *, cfg: _pooled(t, cfg), ("cfg",))
register(max_scatter_p, lambda x, g, *, cfg: _max_scatter_impl(x, g, cfg),
         lambda x, g, *, cfg: ShapedArray(x.shape, g.dtype), ("cfg",))


# ----------------------------------------------------------------------------- forward mode


def _linear_jvp(bind):
    """A map linear in its last operand (earlier ones fixed): its JVP is itself."""

    def jvp(primals, tangents, **params):
        out = bind(*primals, **params)
        t = tangents[-1]
        if type(t) is ad.Zero:
            return out, zero_like(out)
        return out, bind(*primals[:-1], t, **params)

    return jvp


def _max_pool_jvp(primals, tangents, *, cfg):
    (x,), (t,) = primals, tangents
    y = max_pool(x, cfg)
    if type(t) is ad.Zero:
        return y, zero_like(y)
    return y, max_gather(x, t, cfg)


ad.primitive_jvps[avg_pool_p] = _linear_jvp(avg_pool_p.bind)
ad.primitive_jvps[avg_pool_t_p] = _linear_jvp(avg_pool_t_p.bind)
ad.primitive_jvps[max_pool_p] = _max_pool_jvp
ad.primitive_jvps[max_gather_p] = _linear_jvp(max_gather_p.bind)
ad.primitive_jvps[max_scatter_p] = _linear_jvp(max_scatter_p.bind)


# ----------------------------------------------------------------------------- reverse mode


def _avg_pool_transpose(ct, x, *, cfg):
    return [zero_or(ct, x, lambda: avg_pool_t(ct, x.aval.shape[1:-1], cfg))]


def _avg_pool_t_transpose(ct, g, *, in_hw, cfg):
    return [zero_or(ct, g, lambda: avg_pool(ct, cfg))]


def _max_gather_transpose(ct, x, t, *, cfg):
    return [None, zero_or(ct, t, lambda: max_scatter(x, ct, cfg))]


def _max_scatter_transpose(ct, x, g, *, cfg):
    return [None, zero_or(ct, g, lambda: max_gather(x, ct, cfg))]


ad.primitive_transposes[avg_pool_p] = _avg_pool_transpose
ad.primitive_transposes[avg_pool_t_p] = _avg_pool_t_transpose
ad.primitive_transposes[max_gather_p] = _max_gather_transpose
ad.primitive_transposes[max_scatter_p] = _max_scatter_transpose


# ----------------------------------------------------------------------------- batching


def _fold(bind, args, dims):
    """`bind` on the operands with the vmapped axis folded into the batch N (an operand without
    the axis broadcast to it first), the result unfolded."""
    k = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    folded = [into_n(mapped(a, d, k)) for a, d in zip(args, dims)]
    return out_of_n(bind(*folded), k), 0


def _batcher(bind):
    return lambda args, dims, **params: _fold(lambda *a: bind(*a, **params), args, dims)


for _p in (avg_pool_p, avg_pool_t_p, max_pool_p, max_gather_p, max_scatter_p):
    batching.primitive_batchers[_p] = _batcher(_p.bind)
