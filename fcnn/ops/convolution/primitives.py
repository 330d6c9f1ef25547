"""The three convolution maps as JAX primitives: hand-written JVP, transpose and batching rules.

`jax.custom_vjp` (conv.py's binding) serves reverse mode only: `jax.jvp`, `jacfwd`, `hessian`
refuse it. A primitive is how lax defines its own convolution: JAX calls the primitive's JVP
rule for forward mode, its transpose rules for reverse mode (the VJP of a linear map is its
transpose) and its batching rule under `vmap`, and lowers it through the computation given here
(`convolution.algorithms`, the same algorithms as the custom_vjp binding). Every rule below is
written with these three primitives, so no transformation ever reaches lax's own convolution rules.

The maps are bilinear, so their JVPs are the product rule (`bilinear_jvp`) and their transposes
are each other: the table in `convolution.rules`, which both bindings' rules call. Every rule
here is the same for any number of spatial axes (1-D, 2-D, 3-D...): shapes are channels-last,
activations `(N, *spatial, C)` and kernels `(*spatial, C_in/groups, C_out)`.

Batching (see the section below): an axis mapped over the operand that carries the batch alone
folds into the batch N; members of an ensemble run one convolution each (or, sharing the input,
one convolution with their output channels side by side); many independent problems become one
primitive with a members axis.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from fcnn.ops import tuning
from fcnn.ops._bilinear import (
    bilinear_jvp,
    each,
    front,
    independent,
    into_n,
    out_of_n,
    register,
    shape_rule,
)
from fcnn.ops.convolution import algorithms as algo
from fcnn.ops.convolution import rules

# ----------------------------------------------------------------------------- the primitives
# Each carries `members`: 0, or K when both operands and the result have a leading axis of K
# independent problems (what a batching rule makes of a large vmap; see "batching" below).

conv_p = Primitive("fcnn_conv")  # (x, w; cfg, members) -> y
conv_dx_p = Primitive("fcnn_conv_dx")  # (g, w; in_hw, cfg, members) -> dX
conv_dk_p = Primitive("fcnn_conv_dk")  # (x, g; k_hw, cfg, members) -> dK
# (`in_hw`: the forward input's spatial size, `k_hw` the kernel's, one entry per axis)


def conv(x, w, cfg, members=0):
    return conv_p.bind(x, w, cfg=cfg, members=members)


def conv_dx(g, w, in_hw, cfg, members=0):
    return conv_dx_p.bind(g, w, in_hw=tuple(in_hw), cfg=cfg, members=members)


def conv_dk(x, g, k_hw, cfg, members=0):
    return conv_dk_p.bind(x, g, k_hw=tuple(k_hw), cfg=cfg, members=members)


def _compute_forward(x, w, *, cfg):
    return algo.forward(x, w, cfg)


def _compute_dx(g, w, *, in_hw, cfg):
    return algo.grad_input(g, w, in_hw, cfg)


def _compute_dk(x, g, *, k_hw, cfg):
    return algo.grad_kernel(x, g, k_hw, cfg)


def _together_forward(x, w, one, *, cfg):
    return algo.members(0, x, w, (), cfg, one)


def _together_dx(g, w, one, *, in_hw, cfg):
    return algo.members(1, g, w, in_hw, cfg, one)


def _together_dk(x, g, one, *, k_hw, cfg):
    return algo.members(2, x, g, k_hw, cfg, one)


def _conv_shape(x, w, *, cfg):
    return algo.out_shape(x, w, cfg)


def _conv_dx_shape(g, w, *, in_hw, cfg):
    return algo.dx_shape(g, w, in_hw, cfg)


def _conv_dk_shape(x, g, *, k_hw, cfg):
    return algo.dk_shape(x, g, k_hw, cfg)


for _p, _compute, _together, _shape, _static in (
        (conv_p, _compute_forward, _together_forward, _conv_shape, ("cfg", "members")),
        (conv_dx_p, _compute_dx, _together_dx, _conv_dx_shape, ("in_hw", "cfg", "members")),
        (conv_dk_p, _compute_dk, _together_dk, _conv_dk_shape, ("k_hw", "cfg", "members"))):
    # the lowering tells fcnn.tuning which platforms the program is for, and whether exported
    register(_p, each(_compute, loop_batches=True, together=_together), shape_rule(_shape),
             _static, tuning.lowering_rule)


# ----------------------------------------------------------------------------- forward mode


ad.primitive_jvps[conv_p] = bilinear_jvp(conv_p.bind)
ad.primitive_jvps[conv_dx_p] = bilinear_jvp(conv_dx_p.bind)
ad.primitive_jvps[conv_dk_p] = bilinear_jvp(conv_dk_p.bind)


# ----------------------------------------------------------------------------- reverse mode


def _sizes(a, kernel, members):
    """The spatial sizes of `a` (its abstract value if undefined), past the members axis."""
    shape = a.aval.shape if ad.is_undefined_primal(a) else a.shape
    return rules.spatial(shape[1:] if members else shape, kernel)


def _maps(cfg, members):
    return rules.Maps(lambda a, b: conv(a, b, cfg, members),
                      lambda a, b, size: conv_dx(a, b, size, cfg, members),
                      lambda a, b, size: conv_dk(a, b, size, cfg, members))


def _transpose(which, ct, a, b, a_sizes, b_sizes, cfg, members):
    """The cotangent of whichever operand is undefined, from `convolution.rules.cotangents`."""
    wants = (ad.is_undefined_primal(a), not ad.is_undefined_primal(a))
    if type(ct) is ad.Zero:
        undefined = a if wants[0] else b
        zero = ad.Zero(undefined.aval)
        return (zero, None) if wants[0] else (None, zero)
    return rules.cotangents(which, _maps(cfg, members), ct, a, b, a_sizes, b_sizes, wants)


def _conv_transpose(ct, x, w, *, cfg, members):
    return _transpose(rules.FORWARD, ct, x, w, _sizes(x, False, members),
                      _sizes(w, True, members), cfg, members)


def _conv_dx_transpose(ct, g, w, *, in_hw, cfg, members):
    return _transpose(rules.DX, ct, g, w, None, _sizes(w, True, members), cfg, members)


def _conv_dk_transpose(ct, x, g, *, k_hw, cfg, members):
    return _transpose(rules.DK, ct, x, g, _sizes(x, False, members), None, cfg, members)


ad.primitive_transposes[conv_p] = _conv_transpose
ad.primitive_transposes[conv_dx_p] = _conv_dx_transpose
ad.primitive_transposes[conv_dk_p] = _conv_dk_transpose


# ----------------------------------------------------------------------------- batching
# A vmapped axis over the batch-carrying operand alone (x, or g) folds into the batch N: more
# examples of the same problem (per-example gradients of a shared kernel). Otherwise the axis
# maps independent problems — members of an ensemble, the tangents of a Jacobian:
# - members sharing the input x of a forward convolution fold into its output channels (one
#   convolution with K * C_out outputs);
# - up to UNROLL_MAX members run one convolution each (each with its own algorithms: measured
#   faster than any grouped formulation for ensembles on a CPU, docs/performance.md);
# - more (per-example dK with its batch of K, Hessians) become one primitive with `members=K`,
#   whose computation runs the K problems together (see `each`); a vmap of that merges axes.


def _conv_batch(args, dims, *, cfg, members):
    (x, w), (dx_, dw_) = args, dims
    if dw_ is None and not members:  # more examples
        xb = front(x, dx_)
        return out_of_n(conv(into_n(xb), w, cfg), xb.shape[0]), 0
    if dx_ is None and not members and cfg.groups == 1:  # members share the input
        wb = front(w, dw_)  # (K, *k, C_in, C_out) -> (*k, C_in, K * C_out)
        k, kernel = wb.shape[0], wb.shape[1:]
        r = len(kernel) - 2
        wk = wb.transpose(*range(1, r + 2), 0, r + 2).reshape(*kernel[:-1], k * kernel[-1])
        y = conv(x, wk, cfg)
        y = y.reshape(*y.shape[:-1], k, kernel[-1])
        return jnp.moveaxis(y, -2, 0), 0
    return independent(lambda x, w, m: conv(x, w, cfg, m), x, dx_, w, dw_, members,
                       together=True), 0


def _conv_dx_batch(args, dims, *, in_hw, cfg, members):
    (g, w), (dg_, dw_) = args, dims
    if dw_ is None and not members:
        gb = front(g, dg_)
        return out_of_n(conv_dx(into_n(gb), w, in_hw, cfg), gb.shape[0]), 0
    return independent(lambda g, w, m: conv_dx(g, w, in_hw, cfg, m), g, dg_, w, dw_,
                        members, together=True), 0


def _conv_dk_batch(args, dims, *, k_hw, cfg, members):
    (x, g), (dx_, dg_) = args, dims
    return independent(lambda x, g, m: conv_dk(x, g, k_hw, cfg, m), x, dx_, g, dg_,
                        members, together=True), 0


batching.primitive_batchers[conv_p] = _conv_batch
batching.primitive_batchers[conv_dx_p] = _conv_dx_batch
batching.primitive_batchers[conv_dk_p] = _conv_dk_batch
