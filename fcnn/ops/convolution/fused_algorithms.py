"""How the fused convolution's three maps (`convolution.fused`) are computed.

- forward y = act(conv(x, w) + b): under "auto" measured as a whole (its own tuning key, the
  convolution's key plus the epilogue) among the convolution's algorithms, each followed by the
  bias and ReLU (which XLA fuses into the convolution's output or its last pass), and "onednn":
  one native call, the bias inside oneDNN's kernel and ReLU over each cached chunk of output.
- cotangent (dx, dw, db) from g and the saved y: the mask g' = m ⊙ g by XLA, which fuses it into
  whatever computes g (a max pool's backward, which reads y anyway: applied in the native call,
  re-reading y cost the CIFAR net's step 15 ms of 70, docs/performance.md); then, where the
  wanted convolution maps (dX, dK) both run "onednn" (their own measured choices, the keys of
  plain dX and dK), one native call that sums db and runs dX and dK per chunk of images on XLA's
  threads; otherwise the sum by XLA and each map by its own algorithm.
- tangent m ⊙ (conv(ẋ, w) + conv(x, ẇ) + ḃ): the convolution's forward algorithms (forward
  mode is not where the time goes).

Lowered for another platform than the CPU, every branch is XLA's convolution with the same
epilogue (`lax.platform_dependent`, as for the convolution maps).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fcnn.ops import onednn
from fcnn.ops.convolution import algorithms as algo


def act(z, relu):
    """ReLU (fcnn's: `z <= 0` -> 0, a NaN stays) or the identity."""
    return jnp.where(z <= 0, jnp.zeros((), z.dtype), z) if relu else z


def mask(y, t, relu):
    """m ⊙ t: 0 where y <= 0, t elsewhere (a NaN y included); t itself for the identity."""
    return jnp.where(y <= 0, jnp.zeros((), t.dtype), t) if relu else t


def channels(b, ndim):
    """The bias `(C,)` shaped to broadcast over a channels-last array of rank `ndim`."""
    return b.reshape((1,) * (ndim - 1) + (-1,))


def epilogue(bias, relu) -> str:
    return "+".join(name for name, on in (("bias", bias), ("relu", relu)) if on)


def forward(x, w, b, cfg, relu):
    out_hw = algo._out_hw(x.shape[1:-1], w.shape[:-2], cfg)

    def run(algorithm, x, w, *b):
        b = b[0] if b else None
        if algorithm == "onednn" and algo._onednn_runs(x.dtype, cfg, fused=True):
            return onednn.conv_act(x, w, b, out_hw, cfg, relu)
        z = algo._forward(algorithm, x, w, cfg)
        return algo.held(algorithm, act(z if b is None else z + channels(b, z.ndim), relu))

    operands = (x, w) if b is None else (x, w, b)
    return algo._per_platform(cfg, 0, run, operands, (), epilogue(b is not None, relu))


def tangent(dx, dw, db, x, w, y, cfg, relu, conv=algo.forward):
    """m ⊙ (conv(ẋ, w) + conv(x, ẇ) + ḃ), the absent (None) terms left out; `conv(a, b, cfg)`
    computes the convolution (the algorithms here, the primitives under vmap)."""
    terms = [t for t in (None if dx is None else conv(dx, w, cfg),
                         None if dw is None else conv(x, dw, cfg),
                         None if db is None else channels(db, y.ndim)) if t is not None]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return mask(y, jnp.broadcast_to(total, y.shape), relu)


def cotangent(g, x, w, y, cfg, relu, wants):
    in_hw, k_hw = x.shape[1:-1], w.shape[:-2]
    gm = mask(y, g, relu)  # by XLA, fused into what computes g (a max pool's backward reads y)

    def composed(gm, x, w):
        return (algo.grad_input(gm, w, in_hw, cfg) if wants[0] else None,
                algo.grad_kernel(x, gm, k_hw, cfg) if wants[1] else None,
                jnp.sum(gm, axis=tuple(range(gm.ndim - 1))) if wants[2] else None)

    maps = ([algo.choice_dx(g, w, in_hw, cfg)] if wants[0] else []) + (
        [algo.choice_dk(x, g, k_hw, cfg)] if wants[1] else [])
    if (not maps or any(m != "onednn" for m in maps)
            or not algo._onednn_runs(g.dtype, cfg, fused=True)):
        return composed(gm, x, w)

    def native(gm, x, w):
        return onednn.conv_act_backward(gm, x, w, cfg, wants)

    return lax.platform_dependent(gm, x, w, cpu=native, default=composed)
