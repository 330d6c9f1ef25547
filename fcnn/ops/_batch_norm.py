"""Training-mode batch norm with an optional residual added and ReLU applied after it (the end of
a ResNet's basic block), as one op with its own rules, so that on the CPU its forward and its
backward each run as one native call.

x of shape (..., C) is normalised per channel over the set R of every other axis (M = |R|
values per channel); r, when given, has x's shape; m is the ReLU's mask (0 where y <= 0, 1
elsewhere, a NaN y included: fcnn's relu) or 1 everywhere for the identity:

    mu = mean_R x,  var = mean_R (x - mu)^2,  s = sqrt(var + eps),  xhat = (x - mu) / s
    y  = act(gamma xhat + beta + r)

    tangent  t(ẋ, γ̇, β̇, ṙ) = (ẏ, μ̇, v̇):
             ẏ = m ⊙ (gamma (ẋ - mean_R ẋ - xhat mean_R(xhat ẋ)) / s + γ̇ xhat + β̇ + ṙ)
             μ̇ = mean_R ẋ,  v̇ = 2 s mean_R(xhat ẋ)
    cotangent c(g, ḡμ, ḡv) = (dx, dgamma, dbeta, dr):  g' = m ⊙ g,
             dbeta = sum_R g',  dgamma = sum_R g' xhat,  dr = g',
             dx = gamma / s (g' - dbeta / M - xhat dgamma / M) + ḡμ / M + 2 ḡv s xhat / M

For fixed (x, gamma, y) t and c are linear and each other's transpose (<t(ẋ, γ̇, β̇, ṙ), (g, ḡμ,
ḡv)> = <(ẋ, γ̇, β̇, ṙ), c(g, ḡμ, ḡv)>, expanding the means). Each is a primitive, so reverse mode
runs c as one computation: on the CPU with the native kernels one call of two passes (the sums,
then dx and dr), elsewhere the same maths by XLA. A program lowered for `jax.export` holds the
composed maths.

Their derivatives in the primal operands (second order), with mu and var operands of their own
(so ṡ = v̇' / (2 s) and the derivative of xhat is ((ẋ' - μ̇') - xhat ṡ) / s, written ẋhat), m
piecewise constant, A = ẋ - mean_R ẋ - xhat mean_R(xhat ẋ) and B = g' - dbeta / M - xhat dgamma / M:

    d t = t(dẋ, dγ̇, dβ̇, dṙ) + (m ⊙ (γ' A / s + gamma A' / s - gamma A ṡ / s^2 + γ̇ ẋhat), 0,
                            2 ṡ mean_R(xhat ẋ) + 2 s mean_R(ẋhat ẋ)),
          A' = -ẋhat mean_R(xhat ẋ) - xhat mean_R(ẋhat ẋ)
    d c = c(dg, dḡμ, dḡv) + (γ' B / s - gamma B ṡ / s^2 - gamma / s (ẋhat dgamma + xhat dgamma')
                             / M + 2 ḡv (ṡ xhat + s ẋhat) / M,  dgamma', 0, 0),
          dgamma' = sum_R g' ẋhat

(written below with jnp's elementwise operations and sums, whose own rules carry higher orders).
Batching: the statistics are per member, so any batched operand runs the same maths under vmap.

float16 and bfloat16 are computed in float32 (statistics float32, y in x's dtype). The native
kernels take float32; everything else, and every other platform, runs the composed maths.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from fcnn.ops import onednn, tuning
from fcnn.ops._bilinear import ShapedArray, zero_like

norm_act_p = Primitive("fcnn_batch_norm")  # (x, gamma, beta[, r]; eps, relu) -> (y, mu, var)
tangent_p = Primitive("fcnn_batch_norm_tangent")  # (ẋ?, γ̇?, β̇?, ṙ?, x, gamma, mu, var[, y]) -> 3
cotangent_p = Primitive("fcnn_batch_norm_cotangent")  # (g, ḡμ, ḡv, x, gamma, mu, var[, y]) -> 1-4
for _p in (norm_act_p, tangent_p, cotangent_p):
    _p.multiple_results = True


def batch_norm(x, gamma, beta, r, eps, relu):
    """(y, mean, var), mean and var of shape (C,); `r` None or the residual added before the
    activation."""
    operands = (x, gamma, beta) if r is None else (x, gamma, beta, r)
    return tuple(norm_act_p.bind(*operands, eps=eps, relu=relu))


def stat_dtype(dtype):
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def _native(x, gamma, beta) -> bool:
    """Whether the native kernels compute this: loaded, float32, some rows, and not lowered
    for `jax.export` (the exported program holds the composed maths, as it holds the built-in
    table's convolution algorithms)."""
    return (onednn.AVAILABLE and x.size > 0 and not tuning.exporting()
            and all(a.dtype == jnp.float32 for a in (x, gamma, beta)))


# ----------------------------------------------------------------------------- the maths


def _axes(x):
    return tuple(range(x.ndim - 1))


def _mean(a):
    """mean_R a, kept as (1, ..., 1, C)."""
    return jnp.mean(a, axis=_axes(a), keepdims=True)


def _sum(a):
    """sum_R a, as (C,)."""
    return jnp.sum(a, axis=_axes(a))


def _lift(a, ndim):
    """A per-channel (C,) array as (1, ..., 1, C): explicit broadcasting."""
    return a.reshape((1,) * (ndim - 1) + a.shape[-1:])


def _mask(y, t, relu):
    return jnp.where(y <= 0, jnp.zeros((), t.dtype), t) if relu else t


class _Primal:
    """x, and gamma, mu, var lifted to x's rank, in the compute dtype; with s and xhat."""

    def __init__(self, x, gamma, mu, var, eps):
        cd, n = stat_dtype(x.dtype), x.ndim
        self.dtype, self.m, self.n = cd, math.prod(x.shape[:-1]), n
        self.x = x.astype(cd)
        self.gamma, self.mu, self.var = (_lift(a, n).astype(cd) for a in (gamma, mu, var))
        self.s = jnp.sqrt(self.var + eps)
        self.xhat = (self.x - self.mu) / self.s

    def lift(self, a):
        return _lift(a, self.n).astype(self.dtype)


def _forward_composed(x, gamma, beta, r, eps, relu):
    xc = x.astype(stat_dtype(x.dtype))
    mu = jnp.mean(xc, axis=_axes(x))
    var = jnp.mean(jnp.square(xc - _lift(mu, x.ndim)), axis=_axes(x))
    p = _Primal(x, gamma, mu, var, eps)
    z = p.gamma * p.xhat + p.lift(beta)
    z = z if r is None else z + r.astype(p.dtype)
    return _mask(z, z, relu).astype(x.dtype), mu, var


def _tangent_composed(tx, tg, tb, tr, x, gamma, mu, var, y, eps, relu):
    p = _Primal(x, gamma, mu, var, eps)
    u = jnp.zeros(x.shape, p.dtype)
    mt = mxt = jnp.zeros(p.s.shape, p.dtype)
    if tx is not None:
        t = tx.astype(p.dtype)
        mt, mxt = _mean(t), _mean(p.xhat * t)
        u = u + p.gamma * (t - mt - p.xhat * mxt) / p.s
    if tg is not None:
        u = u + p.lift(tg) * p.xhat
    if tb is not None:
        u = u + p.lift(tb)
    if tr is not None:
        u = u + tr.astype(p.dtype)
    return (_mask(y, u, relu).astype(x.dtype), mt.reshape(-1), (2 * p.s * mxt).reshape(-1))


def _cotangent_composed(g, gmu, gvar, x, gamma, mu, var, y, eps, relu, wants):
    p = _Primal(x, gamma, mu, var, eps)
    gm = _mask(y, g.astype(p.dtype), relu)
    db, dg = _sum(gm), _sum(gm * p.xhat)
    dx = None
    if wants[0]:
        dx = (p.gamma / p.s * (gm - p.lift(db) / p.m - p.xhat * p.lift(dg) / p.m)
              + p.lift(gmu) / p.m + 2 * p.lift(gvar) * p.s * p.xhat / p.m)
        dx = dx.astype(x.dtype)
    return (dx, dg.astype(gamma.dtype) if wants[1] else None,
            db.astype(gamma.dtype) if wants[2] else None,
            gm.astype(x.dtype) if wants[3] else None)


# ----------------------------------------------------------------------------- computed by


def _forward(x, gamma, beta, r, eps, relu):
    composed = partial(_forward_composed, eps=eps, relu=relu)
    if not _native(x, gamma, beta) or (r is not None and r.dtype != jnp.float32):
        return composed(x, gamma, beta, r)
    native = partial(onednn.batch_norm, eps=eps, relu=relu)
    return lax.platform_dependent(x, gamma, beta, r, cpu=native, default=composed)


def _cotangent(g, gmu, gvar, x, gamma, mu, var, y, eps, relu, wants):
    def composed(g, gmu, gvar, x, gamma, mu, var, y):
        return _cotangent_composed(g, gmu, gvar, x, gamma, mu, var, y, eps, relu, wants)

    if not _native(x, gamma, g) or any(a.dtype != jnp.float32 for a in (gmu, gvar)):
        return composed(g, gmu, gvar, x, gamma, mu, var, y)

    def native(g, gmu, gvar, x, gamma, mu, var, y):
        dx, dg, db, dr = onednn.batch_norm_backward(g, x, y if relu else None, gamma, mu, var,
                                                    gmu, gvar, eps, wants[0], wants[3])
        return dx, dg if wants[1] else None, db if wants[2] else None, dr

    return lax.platform_dependent(g, gmu, gvar, x, gamma, mu, var, y, cpu=native,
                                  default=composed)


# ----------------------------------------------------------------------------- binding helpers


def _split(args, has):
    """(the tangents, None for the absent), then (x, gamma, mu, var, y or None)."""
    n = sum(has)
    present = iter(args[:n])
    rest = args[n:]
    return (tuple(next(present) if h else None for h in has),
            (*rest[:4], rest[4] if len(rest) > 4 else None))


def _residuals(x, gamma, mu, var, y, relu):
    return (x, gamma, mu, var, y) if relu else (x, gamma, mu, var)


def _tangent(tangents, x, gamma, mu, var, y, eps, relu):
    """t(ẋ, γ̇, β̇, ṙ) with the absent tangents (None or symbolic zeros) left out; None if all
    are."""
    has = tuple(t is not None and type(t) is not ad.Zero for t in tangents)
    if not any(has):
        return None
    present = [t for t, h in zip(tangents, has) if h]
    return tuple(tangent_p.bind(*present, *_residuals(x, gamma, mu, var, y, relu), eps=eps,
                                relu=relu, has=has))


def _instantiate(a, like_shape, dtype):
    return jnp.zeros(like_shape, dtype) if a is None or type(a) is ad.Zero else a


def _cotangent_bind(g, gmu, gvar, x, gamma, mu, var, y, eps, relu, wants):
    """c(g, ḡμ, ḡv)'s results (dx, dgamma, dbeta, dr) named in `wants`, None for the others."""
    c, sd = x.shape[-1:], stat_dtype(x.dtype)
    gmu, gvar = _instantiate(gmu, c, sd), _instantiate(gvar, c, sd)
    got = iter(cotangent_p.bind(g, gmu, gvar, *_residuals(x, gamma, mu, var, y, relu), eps=eps,
                                relu=relu, wants=tuple(wants)))
    return tuple(next(got) if w else None for w in wants)


# ----------------------------------------------------------------------------- registration


def _forward_impl(x, gamma, beta, *r, eps, relu):
    return list(_forward(x, gamma, beta, r[0] if r else None, eps, relu))


def _tangent_impl(*args, eps, relu, has):
    tangents, primals = _split(args, has)
    return list(_tangent_composed(*tangents, *primals, eps, relu))


def _cotangent_impl(g, gmu, gvar, x, gamma, mu, var, *y, eps, relu, wants):
    got = _cotangent(g, gmu, gvar, x, gamma, mu, var, y[0] if y else None, eps, relu, wants)
    return [r for r in got if r is not None]


for _p, _impl, _static in ((norm_act_p, _forward_impl, ("eps", "relu")),
                           (tangent_p, _tangent_impl, ("eps", "relu", "has")),
                           (cotangent_p, _cotangent_impl, ("eps", "relu", "wants"))):
    _p.def_impl(jax.jit(_impl, static_argnames=_static))
    mlir.register_lowering(_p, tuning.lowering_rule(mlir.lower_fun(_impl, multiple_results=True)))


@norm_act_p.def_abstract_eval
def _forward_shape(x, gamma, beta, *r, eps, relu):
    sd = stat_dtype(x.dtype)
    return [ShapedArray(x.shape, x.dtype), ShapedArray(x.shape[-1:], sd),
            ShapedArray(x.shape[-1:], sd)]


@tangent_p.def_abstract_eval
def _tangent_shape(*args, eps, relu, has):
    _, (x, *_) = _split(args, has)
    sd = stat_dtype(x.dtype)
    return [ShapedArray(x.shape, x.dtype), ShapedArray(x.shape[-1:], sd),
            ShapedArray(x.shape[-1:], sd)]


@cotangent_p.def_abstract_eval
def _cotangent_shape(g, gmu, gvar, x, gamma, *rest, eps, relu, wants):
    shapes = ((x.shape, x.dtype), (gamma.shape, gamma.dtype), (gamma.shape, gamma.dtype),
              (x.shape, x.dtype))
    return [ShapedArray(*s) for s, w in zip(shapes, wants) if w]


# ----------------------------------------------------------------------------- forward mode


def _forward_jvp(primals, tangents, *, eps, relu):
    x, gamma = primals[:2]
    y, mu, var = norm_act_p.bind(*primals, eps=eps, relu=relu)
    out = _tangent((*tangents, None)[:4], x, gamma, mu, var, y, eps, relu)
    return (y, mu, var), (list(out) if out is not None else [zero_like(y), zero_like(mu),
                                                              zero_like(var)])


def _moved(p, dx, dgamma, dmu, dvar):
    """ṡ, ẋhat and γ' for the primal tangents (dx, dgamma, dmu, dvar), zeros for the absent."""
    c = p.s.shape[-1:]
    dx = _instantiate(dx, p.x.shape, p.dtype).astype(p.dtype)
    dmu, dvar, dgamma = (p.lift(_instantiate(a, c, p.dtype)) for a in (dmu, dvar, dgamma))
    ds = dvar / (2 * p.s)
    dxhat = ((dx - dmu) - p.xhat * ds) / p.s
    return ds, dxhat, dgamma


def _tangent_jvp(primals, tangents, *, eps, relu, has):
    (tx, tg, _, _), (x, gamma, mu, var, y) = _split(primals, has)
    own, (dx, dgamma, dmu, dvar, _) = _split(tangents, has)
    out = tangent_p.bind(*primals, eps=eps, relu=relu, has=has)
    p = _Primal(x, gamma, mu, var, eps)
    ds, dxhat, dgam = _moved(p, dx, dgamma, dmu, dvar)
    du = jnp.zeros(x.shape, p.dtype)
    dv = jnp.zeros(x.shape[-1:], p.dtype)
    if tx is not None:  # (the tangent operands t, γ̇ stay fixed: t's own term is below)
        t = tx.astype(p.dtype)
        mxt, dmxt = _mean(p.xhat * t), _mean(dxhat * t)
        a = t - _mean(t) - p.xhat * mxt
        da = -dxhat * mxt - p.xhat * dmxt
        du = du + dgam * a / p.s + p.gamma * da / p.s - p.gamma * a * ds / p.s ** 2
        dv = dv + (2 * ds * mxt + 2 * p.s * dmxt).reshape(-1)
    if tg is not None:
        du = du + p.lift(tg) * dxhat
    moved = [_mask(y, du, relu).astype(x.dtype), jnp.zeros_like(dv), dv]
    own = _tangent(own, x, gamma, mu, var, y, eps, relu)
    if own is not None:
        moved = [a + b for a, b in zip(moved, own)]
    return out, moved


def _cotangent_jvp(primals, tangents, *, eps, relu, wants):
    g, gmu, gvar, x, gamma, mu, var, *y = primals
    dg, dgmu, dgvar, dx, dgamma, dmu, dvar, *_ = tangents
    y = y[0] if y else None
    outs = cotangent_p.bind(*primals, eps=eps, relu=relu, wants=wants)
    p = _Primal(x, gamma, mu, var, eps)
    ds, dxhat, dgam = _moved(p, dx, dgamma, dmu, dvar)
    gm = _mask(y, g.astype(p.dtype), relu)
    db, dgm = _sum(gm), _sum(gm * p.xhat)
    d_dg = _sum(gm * dxhat)
    b = gm - p.lift(db) / p.m - p.xhat * p.lift(dgm) / p.m
    d_dx = (dgam * b / p.s - p.gamma * b * ds / p.s ** 2
            - p.gamma / p.s * (dxhat * p.lift(dgm) + p.xhat * p.lift(d_dg)) / p.m
            + 2 * p.lift(gvar) * (ds * p.xhat + p.s * dxhat) / p.m)
    moved = [d_dx.astype(x.dtype), d_dg.astype(gamma.dtype), jnp.zeros(gamma.shape, gamma.dtype),
             jnp.zeros(x.shape, x.dtype)]
    moved = [m for m, w in zip(moved, wants) if w]
    if any(type(t) is not ad.Zero for t in (dg, dgmu, dgvar)):
        if type(dg) is ad.Zero:
            dg = jnp.zeros(g.shape, g.dtype)
        own = [r for r in _cotangent_bind(dg, dgmu, dgvar, x, gamma, mu, var, y, eps, relu,
                                          wants) if r is not None]
        moved = [a + b for a, b in zip(moved, own)]
    return outs, moved


ad.primitive_jvps[norm_act_p] = _forward_jvp
ad.primitive_jvps[tangent_p] = _tangent_jvp
ad.primitive_jvps[cotangent_p] = _cotangent_jvp


# ----------------------------------------------------------------------------- reverse mode


def _tangent_transpose(cts, *args, eps, relu, has):
    """<t(ẋ, γ̇, β̇, ṙ), (cy, cμ, cv)> = <(ẋ, γ̇, β̇, ṙ), c(cy, cμ, cv)>."""
    slots, (x, gamma, mu, var, y) = _split(args, has)
    wants = tuple(s is not None and ad.is_undefined_primal(s) for s in slots)
    cy, cmu, cvar = cts
    if type(cy) is ad.Zero and type(cmu) is ad.Zero and type(cvar) is ad.Zero or not any(wants):
        got = [ad.Zero(s.aval) if w else None for s, w in zip(slots, wants)]
    else:
        cy = jnp.zeros(x.shape, x.dtype) if type(cy) is ad.Zero else cy
        got = _cotangent_bind(cy, cmu, cvar, x, gamma, mu, var, y, eps, relu, wants)
    return [c for c, h in zip(got, has) if h] + [None] * (len(args) - sum(has))


def _cotangent_transpose(cts, g, gmu, gvar, x, gamma, mu, var, *y, eps, relu, wants):
    """<c(g, ḡμ, ḡv), (a, b, c, e)> = <(g, ḡμ, ḡv), t(a, b, c, e)>: c is linear in (g, ḡμ,
    ḡv)."""
    full = iter(cts)
    per = tuple(next(full) if w else None for w in wants)
    got = _tangent(per, x, gamma, mu, var, y[0] if y else None, eps, relu)
    if got is None:
        got = [ad.Zero(a.aval) for a in (g, gmu, gvar)]
    return [*got, None, None, None, None] + [None] * len(y)


ad.primitive_transposes[tangent_p] = _tangent_transpose
ad.primitive_transposes[cotangent_p] = _cotangent_transpose


# ----------------------------------------------------------------------------- batching


def _forward_batch(args, dims, *, eps, relu):
    def one(x, gamma, beta, *r):
        return _forward_composed(x, gamma, beta, r[0] if r else None, eps, relu)

    outs = jax.vmap(one, in_axes=dims)(*args)
    return list(outs), [0, 0, 0]


def _tangent_batch(args, dims, *, eps, relu, has):
    def one(*a):
        tangents, primals = _split(a, has)
        return _tangent_composed(*tangents, *primals, eps, relu)

    return list(jax.vmap(one, in_axes=dims)(*args)), [0, 0, 0]


def _cotangent_batch(args, dims, *, eps, relu, wants):
    def one(g, gmu, gvar, x, gamma, mu, var, *y):
        got = _cotangent_composed(g, gmu, gvar, x, gamma, mu, var, y[0] if y else None, eps,
                                  relu, wants)
        return [r for r in got if r is not None]

    outs = jax.vmap(one, in_axes=dims)(*args)
    return outs, [0] * len(outs)


batching.primitive_batchers[norm_act_p] = _forward_batch
batching.primitive_batchers[tangent_p] = _tangent_batch
batching.primitive_batchers[cotangent_p] = _cotangent_batch
