"""Convolution with its epilogue, y = act(conv(x, w) + b), act = identity or ReLU: one op with
its own rules, so that on the CPU the forward and the backward each run as one native call.

With z = conv(x, w) + b and m the ReLU's mask, 1 where y > 0 or y is NaN and 0 where y <= 0
(exactly where z <= 0: fcnn's relu, whose slope is 0 at 0 and 1 at a NaN), or 1 everywhere for
the identity:

    y            = act(z)
    JVP          ẏ = t(ẋ, ẇ, ḃ) = m ⊙ (conv(ẋ, w) + conv(x, ẇ) + ḃ)
    VJP          c(g) = (dx, dw, db):  g' = m ⊙ g,  dx = conv_dx(g', w),  dw = conv_dk(x, g'),
                                        db = Σ_{n,h,w} g'

For fixed x, w, y the tangent map t and the cotangent map c are linear and each other's
transpose (m ⊙ is its own; conv's transposes are conv_dx and conv_dk; the bias broadcast's is
the sum). Each is a primitive of its own, so reverse mode runs c as one computation: on the CPU
with the native kernels the mask by XLA (fused into whatever computes g) and one call that sums
db and runs oneDNN's dX and dK per chunk of images on XLA's threads; elsewhere the same maths
from fcnn's convolution maps.

Derivatives of the two maps (second order, forward over reverse), m being piecewise constant:

    d t(ẋ, ẇ, ḃ; x, w)  = t(dẋ, dẇ, dḃ; x, w) + t(0, dw, 0; ẋ, ·) + t(dx, 0, 0; ·, ẇ)
    d c(g; x, w)        = c(dg; x, w) + (conv_dx(m ⊙ g, dw), conv_dk(dx, m ⊙ g), 0)

(the middle terms of d t: m ⊙ conv(ẋ, dw) and m ⊙ conv(dx, ẇ), each a t with its operands
swapped). Batching: an axis over the batch-carrying operands alone folds into N for the forward;
anything else runs the same maths from fcnn's convolution primitives under `vmap`, whose batching
rules handle members (`convolution.primitives`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from fcnn.ops import tuning
from fcnn.ops._bilinear import ShapedArray, front, into_n, out_of_n, zero_like
from fcnn.ops.convolution import fused_algorithms as compute
from fcnn.ops.convolution import primitives as cp
from fcnn.ops.convolution import rules

conv_act_p = Primitive("fcnn_conv_act")  # (x, w[, b]; cfg, relu) -> y
tangent_p = Primitive("fcnn_conv_act_tangent")  # (ẋ?, ẇ?, ḃ?, x, w, y; cfg, relu, has) -> ẏ
cotangent_p = Primitive("fcnn_conv_act_cotangent")  # (g, x, w, y; cfg, relu, wants) -> (dx?, ...)
cotangent_p.multiple_results = True


def conv_act(x, w, b, cfg, relu):
    return conv_act_p.bind(*((x, w) if b is None else (x, w, b)), cfg=cfg, relu=relu)


def _tangent(tangents, x, w, y, cfg, relu):
    """t(ẋ, ẇ, ḃ) with the missing tangents (None or symbolic zeros) left out."""
    has = tuple(t is not None and type(t) is not ad.Zero for t in tangents)
    if not any(has):
        return None
    present = [t for t, h in zip(tangents, has) if h]
    return tangent_p.bind(*present, x, w, y, cfg=cfg, relu=relu, has=has)


def _cotangent(g, x, w, y, cfg, relu, wants):
    """c(g)'s results named in `wants` (dx, dw, db); None for the others."""
    got = iter(cotangent_p.bind(g, x, w, y, cfg=cfg, relu=relu, wants=tuple(wants)))
    return tuple(next(got) if want else None for want in wants)


# ----------------------------------------------------------------------------- the same maths
# from fcnn's convolution primitives: the batching rules' vmap runs these (the primitives'
# batching rules then handle members).


def _composed_forward(x, w, b, *, cfg, relu):
    z = cp.conv(x, w, cfg)
    return compute.act(z if b is None else z + compute.channels(b, z.ndim), relu)


def _composed_tangent(dx, dw, db, x, w, y, *, cfg, relu):
    return compute.tangent(dx, dw, db, x, w, y, cfg, relu, conv=cp.conv)


def _composed_cotangent(g, x, w, y, *, cfg, relu, wants):
    gm = compute.mask(y, g, relu)
    return (cp.conv_dx(gm, w, rules.spatial(x.shape), cfg) if wants[0] else None,
            cp.conv_dk(x, gm, rules.spatial(w.shape, True), cfg) if wants[1] else None,
            jnp.sum(gm, axis=tuple(range(gm.ndim - 1))) if wants[2] else None)


# ----------------------------------------------------------------------------- registration


def _split_tangent(args, has):
    """(ẋ, ẇ, ḃ) with None for the absent, then (x, w, y)."""
    present = iter(args[:sum(has)])
    return tuple(next(present) if h else None for h in has), args[sum(has):]


def _forward_impl(*args, cfg, relu):
    x, w, *b = args
    return compute.forward(x, w, b[0] if b else None, cfg, relu)


def _tangent_impl(*args, cfg, relu, has):
    (dx, dw, db), (x, w, y) = _split_tangent(args, has)
    return compute.tangent(dx, dw, db, x, w, y, cfg, relu)


def _cotangent_impl(g, x, w, y, *, cfg, relu, wants):
    return [r for r in compute.cotangent(g, x, w, y, cfg, relu, wants) if r is not None]


for _p, _impl, _static, _many in (
        (conv_act_p, _forward_impl, ("cfg", "relu"), False),
        (tangent_p, _tangent_impl, ("cfg", "relu", "has"), False),
        (cotangent_p, _cotangent_impl, ("cfg", "relu", "wants"), True)):
    _p.def_impl(jax.jit(_impl, static_argnames=_static))
    mlir.register_lowering(_p, tuning.lowering_rule(mlir.lower_fun(_impl, multiple_results=_many)))


@conv_act_p.def_abstract_eval
def _forward_shape(x, w, *b, cfg, relu):
    return ShapedArray(cp._conv_shape(x.shape, w.shape, cfg=cfg), x.dtype)


@tangent_p.def_abstract_eval
def _tangent_shape(*args, cfg, relu, has):
    return ShapedArray(args[-1].shape, args[-1].dtype)


@cotangent_p.def_abstract_eval
def _cotangent_shape(g, x, w, y, *, cfg, relu, wants):
    shapes = (x.shape, w.shape, w.shape[-1:])
    return [ShapedArray(s, g.dtype) for s, want in zip(shapes, wants) if want]


# ----------------------------------------------------------------------------- forward mode


def _forward_jvp(primals, tangents, *, cfg, relu):
    x, w, *b = primals
    dx, dw, *db = tangents
    y = conv_act_p.bind(*primals, cfg=cfg, relu=relu)
    dy = _tangent((dx, dw, db[0] if db else None), x, w, y, cfg, relu)
    return y, zero_like(y) if dy is None else dy


def _tangent_jvp(primals, tangents, *, cfg, relu, has):
    """d t = t(dẋ, dẇ, dḃ; x, w) + t(0, dw, 0; ẋ, ·) + t(dx, 0, 0; ·, ẇ) (m does not move)."""
    (tx, tw, tb), (x, w, y) = _split_tangent(primals, has)
    (dtx, dtw, dtb), (dx, dw, _) = _split_tangent(tangents, has)
    out = tangent_p.bind(*primals, cfg=cfg, relu=relu, has=has)
    terms = [_tangent((dtx, dtw, dtb), x, w, y, cfg, relu)]
    if tx is not None:  # m ⊙ conv(ẋ, dw)
        terms.append(_tangent((None, dw, None), tx, w, y, cfg, relu))
    if tw is not None:  # m ⊙ conv(dx, ẇ)
        terms.append(_tangent((dx, None, None), x, tw, y, cfg, relu))
    terms = [t for t in terms if t is not None]
    return out, sum(terms[1:], terms[0]) if terms else zero_like(out)


def _cotangent_jvp(primals, tangents, *, cfg, relu, wants):
    """d c = c(dg) + (conv_dx(m ⊙ g, dw), conv_dk(dx, m ⊙ g), 0) (m does not move)."""
    g, x, w, y = primals
    dg, dx, dw, _ = tangents
    outs = cotangent_p.bind(g, x, w, y, cfg=cfg, relu=relu, wants=wants)
    terms = [list(_cotangent(dg, x, w, y, cfg, relu, wants))] if type(dg) is not ad.Zero else []
    gm = compute.mask(y, g, relu)
    extra = [cp.conv_dx(gm, dw, rules.spatial(x.shape), cfg)
             if wants[0] and type(dw) is not ad.Zero else None,
             cp.conv_dk(dx, gm, rules.spatial(w.shape, True), cfg)
             if wants[1] and type(dx) is not ad.Zero
             else None, None]
    terms.append(extra)
    result = []
    for i, want in enumerate(wants):
        if want:
            parts = [t[i] for t in terms if t[i] is not None]
            result.append(sum(parts[1:], parts[0]) if parts else zero_like(outs[len(result)]))
    return outs, result


ad.primitive_jvps[conv_act_p] = _forward_jvp
ad.primitive_jvps[tangent_p] = _tangent_jvp
ad.primitive_jvps[cotangent_p] = _cotangent_jvp


# ----------------------------------------------------------------------------- reverse mode


def _tangent_transpose(ct, *args, cfg, relu, has):
    """<t(ẋ, ẇ, ḃ), ct> = <(ẋ, ẇ, ḃ), c(ct)>: the cotangents of the undefined tangents."""
    (tx, tw, tb), (x, w, y) = _split_tangent(args, has)
    slots = (tx, tw, tb)
    wants = tuple(s is not None and ad.is_undefined_primal(s) for s in slots)
    n = sum(has)
    if type(ct) is ad.Zero or not any(wants):
        cts = [ad.Zero(s.aval) if w_ else None for s, w_ in zip(slots, wants)]
    else:
        cts = _cotangent(ct, x, w, y, cfg, relu, wants)
    return [c for c, h in zip(cts, has) if h][:n] + [None, None, None]


def _cotangent_transpose(cts, g, x, w, y, *, cfg, relu, wants):
    """<c(g), (a, b, c)> = <g, t(a, b, c)>: c is linear in g alone (its JVP carries the rest)."""
    full = iter(cts)
    per = [next(full) if want else None for want in wants]
    dg = _tangent(tuple(per), x, w, y, cfg, relu)
    return [ad.Zero(g.aval) if dg is None else dg, None, None, None]


ad.primitive_transposes[tangent_p] = _tangent_transpose
ad.primitive_transposes[cotangent_p] = _cotangent_transpose


# ----------------------------------------------------------------------------- batching


def _forward_batch(args, dims, *, cfg, relu):
    if dims[0] is not None and all(d is None for d in dims[1:]):  # more examples
        xb = front(args[0], dims[0])
        y = conv_act_p.bind(into_n(xb), *args[1:], cfg=cfg, relu=relu)
        return out_of_n(y, xb.shape[0]), 0
    x, w, *b = args
    fn = partial(_composed_forward, cfg=cfg, relu=relu)
    return jax.vmap(lambda x, w, *b: fn(x, w, b[0] if b else None), in_axes=dims)(*args), 0


def _tangent_batch(args, dims, *, cfg, relu, has):
    def one(*a):
        (dx, dw, db), (x, w, y) = _split_tangent(a, has)
        return _composed_tangent(dx, dw, db, x, w, y, cfg=cfg, relu=relu)

    return jax.vmap(one, in_axes=dims)(*args), 0


def _cotangent_batch(args, dims, *, cfg, relu, wants):
    def one(*a):
        return [r for r in _composed_cotangent(*a, cfg=cfg, relu=relu, wants=wants)
                if r is not None]

    outs = jax.vmap(one, in_axes=dims)(*args)
    return outs, [0] * len(outs)


batching.primitive_batchers[conv_act_p] = _forward_batch
batching.primitive_batchers[tangent_p] = _tangent_batch
batching.primitive_batchers[cotangent_p] = _cotangent_batch
