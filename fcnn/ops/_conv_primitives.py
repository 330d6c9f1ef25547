"""The three convolution maps as JAX primitives: hand-written JVP, transpose and batching rules.

`jax.custom_vjp` (conv.py's binding) serves reverse mode only: `jax.jvp`, `jacfwd`, `hessian`
refuse it. A primitive is how lax defines its own convolution: JAX calls the primitive's JVP
rule for forward mode, its transpose rules for reverse mode (the VJP of a linear map is its
transpose) and its batching rule under `vmap`, and lowers it through the computation given here
(`_conv_algorithms`, the same algorithms as the custom_vjp binding). Every rule below is written
with these three primitives, so no transformation ever reaches lax's own convolution rules.

The maps are bilinear, so their derivatives are the product rule and their transposes are each
other:

    map            JVP                              transpose (cotangent ct)
    conv(x, w)     conv(x', w) + conv(x, w')        x: conv_dx(ct, w)   w: conv_dk(x, ct)
    conv_dx(g, w)  conv_dx(g', w) + conv_dx(g, w')  g: conv(ct, w)      w: conv_dk(ct, g)
    conv_dk(x, g)  conv_dk(x', g) + conv_dk(x, g')  x: conv_dx(g, ct)   g: conv(x, ct)

Batching: an axis mapped over the operand that carries the batch (x, or g) alone folds into the
batch N (per-example gradients); members mapped over both operands, or over the kernel (an
ensemble under `vmap`), fold into channel groups — `K` members of `G` groups are one convolution
of `K*G` groups, computed as batched GEMMs over shared patches (im2col) on a CPU instead of
XLA:CPU's grouped convolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from fcnn.ops import _conv_algorithms as algo


def _shaped(shape, dtype):
    return jax.core.ShapedArray(tuple(shape), dtype)


# ----------------------------------------------------------------------------- the primitives

conv_p = Primitive("fcnn_conv")  # (x, w; cfg) -> y
conv_dx_p = Primitive("fcnn_conv_dx")  # (g, w; in_hw, cfg) -> dX
conv_dk_p = Primitive("fcnn_conv_dk")  # (x, g; k_hw, cfg) -> dK


def conv(x, w, cfg):
    return conv_p.bind(x, w, cfg=cfg)


def conv_dx(g, w, in_hw, cfg):
    return conv_dx_p.bind(g, w, in_hw=tuple(in_hw), cfg=cfg)


def conv_dk(x, g, k_hw, cfg):
    return conv_dk_p.bind(x, g, k_hw=tuple(k_hw), cfg=cfg)


def _compute_forward(x, w, *, cfg):
    return algo.forward(x, w, cfg)


def _compute_dx(g, w, *, in_hw, cfg):
    return algo.grad_input(g, w, in_hw, cfg)


def _compute_dk(x, g, *, k_hw, cfg):
    return algo.grad_kernel(x, g, k_hw, cfg)


for _p, _compute, _static in ((conv_p, _compute_forward, ("cfg",)),
                              (conv_dx_p, _compute_dx, ("in_hw", "cfg")),
                              (conv_dk_p, _compute_dk, ("k_hw", "cfg"))):
    # an eager call runs the computation compiled once per configuration; under jit it is
    # inlined into the caller's program
    _p.def_impl(jax.jit(_compute, static_argnames=_static))
    mlir.register_lowering(_p, mlir.lower_fun(_compute, multiple_results=False))


def _out_hw(in_hw, k_hw, cfg):
    return algo._out_hw(in_hw, k_hw, cfg)


@conv_p.def_abstract_eval
def _conv_shape(x, w, *, cfg):
    n, h, wd, _ = x.shape
    return _shaped((n, *_out_hw((h, wd), w.shape[:2], cfg), w.shape[3]), x.dtype)


@conv_dx_p.def_abstract_eval
def _conv_dx_shape(g, w, *, in_hw, cfg):
    return _shaped((g.shape[0], *in_hw, w.shape[2] * cfg.groups), g.dtype)


@conv_dk_p.def_abstract_eval
def _conv_dk_shape(x, g, *, k_hw, cfg):
    return _shaped((*k_hw, x.shape[3] // cfg.groups, g.shape[3]), x.dtype)


# ----------------------------------------------------------------------------- forward mode


def _bilinear_jvp(bind):
    """The product rule of a bilinear map `bind(a, b)`: `bind(a', b) + bind(a, b')`."""

    def jvp(primals, tangents, **params):
        a, b = primals
        da, db = tangents
        out = bind(a, b, **params)
        terms = [bind(da, b, **params)] if type(da) is not ad.Zero else []
        if type(db) is not ad.Zero:
            terms.append(bind(a, db, **params))
        if not terms:
            return out, ad.Zero(jax.core.get_aval(out).to_tangent_aval())
        return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]

    return jvp


ad.primitive_jvps[conv_p] = _bilinear_jvp(conv_p.bind)
ad.primitive_jvps[conv_dx_p] = _bilinear_jvp(conv_dx_p.bind)
ad.primitive_jvps[conv_dk_p] = _bilinear_jvp(conv_dk_p.bind)


# ----------------------------------------------------------------------------- reverse mode


def _zero_or(ct, operand, make):
    """The cotangent for a linear `operand`: `make()`, or a symbolic zero when `ct` is one."""
    return ad.Zero(operand.aval) if type(ct) is ad.Zero else make()


def _conv_transpose(ct, x, w, *, cfg):
    """<conv(x, w), ct> = <x, conv_dx(ct, w)> = <w, conv_dk(x, ct)>."""
    if ad.is_undefined_primal(x):
        return _zero_or(ct, x, lambda: conv_dx(ct, w, x.aval.shape[1:3], cfg)), None
    return None, _zero_or(ct, w, lambda: conv_dk(x, ct, w.aval.shape[:2], cfg))


def _conv_dx_transpose(ct, g, w, *, in_hw, cfg):
    """<conv_dx(g, w), ct> = <g, conv(ct, w)> = <w, conv_dk(ct, g)>."""
    if ad.is_undefined_primal(g):
        return _zero_or(ct, g, lambda: conv(ct, w, cfg)), None
    return None, _zero_or(ct, w, lambda: conv_dk(ct, g, w.aval.shape[:2], cfg))


def _conv_dk_transpose(ct, x, g, *, k_hw, cfg):
    """<conv_dk(x, g), ct> = <x, conv_dx(g, ct)> = <g, conv(x, ct)>."""
    if ad.is_undefined_primal(x):
        return _zero_or(ct, x, lambda: conv_dx(g, ct, x.aval.shape[1:3], cfg)), None
    return None, _zero_or(ct, g, lambda: conv(x, ct, cfg))


ad.primitive_transposes[conv_p] = _conv_transpose
ad.primitive_transposes[conv_dx_p] = _conv_dx_transpose
ad.primitive_transposes[conv_dk_p] = _conv_dk_transpose


# ----------------------------------------------------------------------------- batching


def _front(a, dim):
    """`a` with its mapped axis first (None: not mapped)."""
    return a if dim is None else jnp.moveaxis(a, dim, 0)


def _into_n(a):
    """(K, N, ...) -> (K*N, ...)."""
    return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def _out_of_n(a, k):
    return a.reshape(k, a.shape[0] // k, *a.shape[1:])


def _into_channels(a):
    """(K, N, H, W, C) -> (N, H, W, K*C): member k's channels are block k (its groups)."""
    k, n, h, w, c = a.shape
    return a.transpose(1, 2, 3, 0, 4).reshape(n, h, w, k * c)


def _out_of_channels(a, k):
    n, h, w, kc = a.shape
    return a.reshape(n, h, w, k, kc // k).transpose(3, 0, 1, 2, 4)


def _kernel_into_groups(w):
    """(K, kh, kw, cig, C_out) -> (kh, kw, cig, K*C_out): member k's output channels are groups
    k*G .. k*G+G-1 of a K*G-group kernel (its own G groups in order)."""
    k, kh, kw, cig, cout = w.shape
    return w.transpose(1, 2, 3, 0, 4).reshape(kh, kw, cig, k * cout)


def _kernel_out_of_groups(w, k):
    kh, kw, cig, kc = w.shape
    return w.reshape(kh, kw, cig, k, kc // k).transpose(3, 0, 1, 2, 4)


def _members(cfg, k):
    """`cfg` for K members folded into channel groups. Under "auto": batched GEMMs over the
    shared patches (im2col) on a CPU, whose grouped convolution is slow; other platforms keep
    their native grouped convolution. An algorithm named explicitly stays."""
    if not cfg.auto:
        return cfg._replace(groups=cfg.groups * k)
    return cfg._replace(groups=cfg.groups * k, algorithm=("im2col",) * 3)


def _broadcast(a, dim, k):
    return jnp.broadcast_to(a, (k, *a.shape)) if dim is None else _front(a, dim)


def _conv_batch(args, dims, *, cfg):
    (x, w), (dx_, dw_) = args, dims
    if dw_ is None:  # examples (or anything) mapped over x alone: more batch
        xb = _front(x, dx_)
        return _out_of_n(conv(_into_n(xb), w, cfg), xb.shape[0]), 0
    k = w.shape[dw_]
    xb, wb = _broadcast(x, dx_, k), _front(w, dw_)
    y = conv(_into_channels(xb), _kernel_into_groups(wb), _members(cfg, k))
    return _out_of_channels(y, k), 0


def _conv_dx_batch(args, dims, *, in_hw, cfg):
    (g, w), (dg_, dw_) = args, dims
    if dw_ is None:
        gb = _front(g, dg_)
        return _out_of_n(conv_dx(_into_n(gb), w, in_hw, cfg), gb.shape[0]), 0
    k = w.shape[dw_]
    gb, wb = _broadcast(g, dg_, k), _front(w, dw_)
    dx = conv_dx(_into_channels(gb), _kernel_into_groups(wb), in_hw, _members(cfg, k))
    return _out_of_channels(dx, k), 0


def _conv_dk_batch(args, dims, *, k_hw, cfg):
    (x, g), (dx_, dg_) = args, dims
    k = x.shape[dx_] if dx_ is not None else g.shape[dg_]
    xb, gb = _broadcast(x, dx_, k), _broadcast(g, dg_, k)
    dk = conv_dk(_into_channels(xb), _into_channels(gb), k_hw, _members(cfg, k))
    return _kernel_out_of_groups(dk, k), 0


batching.primitive_batchers[conv_p] = _conv_batch
batching.primitive_batchers[conv_dx_p] = _conv_dx_batch
batching.primitive_batchers[conv_dk_p] = _conv_dk_batch
