"""The convolution maps under the custom_vjp binding (`_binding`): each a `jax.custom_vjp` whose
backward is written with the other two, by the same table the primitives' transposes use
(`convolution.rules.cotangents`). Reverse mode only; every order of it runs these rules, in any
number of spatial axes."""

from __future__ import annotations

from functools import partial

import jax
from jax.custom_derivatives import SymbolicZero

from fcnn.ops.convolution import algorithms as algo
from fcnn.ops.convolution import fused_algorithms as compute
from fcnn.ops.convolution import rules


def _maps(cfg):
    return rules.Maps(lambda a, b: conv(a, b, cfg),
                      lambda a, b, size: conv_dx(a, b, size, cfg),
                      lambda a, b, size: conv_dk(a, b, size, cfg))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv(x, w, cfg):
    return algo.forward(x, w, cfg)


# Each fwd computes its output through the op itself, not its algorithm: in reverse over
# reverse, JAX differentiates fwd, and through the op that runs this rule again (through the
# algorithm it would run lax's own convolution JVP, or fail on the FFI kernels).
def _conv_fwd(x, w, cfg):
    return conv(x, w, cfg), (x, w)


def _conv_bwd(cfg, res, g):
    """dX = conv_dx(g, w), dK = conv_dk(x, g).

    dX: g with s-1 zeros between rows/cols (lhs dilation s), padded by (F_eff-1-p_lo,
    F_eff-1-p_hi+r), correlated with the 180-degree rotated kernel (in/out channels swapped per
    group) dilated by d; r = (H + p_lo + p_hi - F_eff) mod s is what the forward floor dropped.
    dK: dw[a,b,c,o] = sum_{n,i,j} g[n,i,j,o] x[n, i*s+a*d, j*s+b*d, c], one convolution with the
    batch contracted, g as a kernel dilated by s, window step d, high padding p_hi - r.
    (Per spatial axis in any rank.) Residuals: x and w.
    """
    x, w = res
    return rules.cotangents(rules.FORWARD, _maps(cfg), g, x, w, rules.spatial(x.shape),
                            rules.spatial(w.shape, kernel=True))


conv.defvjp(_conv_fwd, _conv_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_dx(g, w, in_hw, cfg):
    return algo.grad_input(g, w, in_hw, cfg)


def _conv_dx_fwd(g, w, in_hw, cfg):
    return conv_dx(g, w, in_hw, cfg), (g, w)


def _conv_dx_bwd(in_hw, cfg, res, ct):
    """dX is bilinear in (g, w). Residuals: g and w."""
    g, w = res
    return rules.cotangents(rules.DX, _maps(cfg), ct, g, w, None,
                            rules.spatial(w.shape, kernel=True))


conv_dx.defvjp(_conv_dx_fwd, _conv_dx_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_dk(x, g, k_hw, cfg):
    return algo.grad_kernel(x, g, k_hw, cfg)


def _conv_dk_fwd(x, g, k_hw, cfg):
    return conv_dk(x, g, k_hw, cfg), (x, g)


def _conv_dk_bwd(k_hw, cfg, res, ct):
    """dK is bilinear in (x, g). Residuals: x and g."""
    x, g = res
    return rules.cotangents(rules.DK, _maps(cfg), ct, x, g, rules.spatial(x.shape), None)


conv_dk.defvjp(_conv_dk_fwd, _conv_dk_bwd)


# ----------------------------------------------------------------------------- conv + bias + act
# The fused convolution (`convolution.fused`'s maths): y = act(conv(x, w) + b), its backward
# c(g) one custom_vjp computed as one map (native on the CPU), whose own backward is written
# with the maps above, so every order runs fcnn's rules. Both take symbolic zeros: c's inputs
# include the saved y, whose cotangent is zero (m does not move with y); instantiated as an
# array of zeros it would run the forward's rule on it, and conv_dk(x, 0) is NaN where x is
# (0 * NaN), a NaN the oracle's autodiff never makes.


def _values(*primals):
    return [p if p is None else p.value for p in primals]


def _zero(ct):
    return ct is None or isinstance(ct, SymbolicZero)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv_act(x, w, b, cfg, relu):
    return compute.forward(x, w, b, cfg, relu)


def _conv_act_fwd(x, w, b, cfg, relu):
    x, w, b = _values(x, w, b)
    y = conv_act(x, w, b, cfg, relu)
    return y, (x, w, y, b)


def _conv_act_bwd(cfg, relu, res, g):
    """c(g) = (conv_dx(g', w), conv_dk(x, g'), Σ g') with g' = m ⊙ g. Residuals: x, w, y (and b,
    for its presence)."""
    x, w, y, b = res
    if _zero(g):
        return None, None, None
    return conv_act_cotangent(g, x, w, y, cfg, relu, b is not None)


conv_act.defvjp(_conv_act_fwd, _conv_act_bwd, symbolic_zeros=True)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def conv_act_cotangent(g, x, w, y, cfg, relu, bias):
    return compute.cotangent(g, x, w, y, cfg, relu, (True, True, bias))


def _cotangent_fwd(g, x, w, y, cfg, relu, bias):
    g, x, w, y = _values(g, x, w, y)
    return conv_act_cotangent(g, x, w, y, cfg, relu, bias), (g, x, w, y)


def _cotangent_bwd(cfg, relu, bias, res, cts):
    """c is linear in g with transpose t(a, b, c) = m ⊙ (conv(a, w) + conv(x, b) + c); its dw is
    linear in x (transpose conv_dx(g', ·)) and its dx in w (transpose conv_dk(·, g')); m does
    not move with y (its cotangent: a symbolic zero)."""
    g, x, w, y = res
    cdx, cdw, cdb = (None if _zero(c) else c for c in cts)
    gm = compute.mask(y, g, relu)
    dg = None if cdx is None and cdw is None and cdb is None else compute.tangent(
        cdx, cdw, cdb, x, w, y, cfg, relu, conv=conv)
    return (dg, None if cdw is None else conv_dx(gm, cdw, rules.spatial(x.shape), cfg),
            None if cdx is None else conv_dk(cdx, gm, rules.spatial(w.shape, True), cfg), None)


conv_act_cotangent.defvjp(_cotangent_fwd, _cotangent_bwd, symbolic_zeros=True)
