"""Inverted dropout with its hand-written rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fcnn import _args
from fcnn.ops import _binding, _checks


def dropout(key, x, rate):
    """Inverted dropout: zero each element with probability `rate`, scale the rest by `1/(1-rate)`.

    The expectation of the output equals `x`, so evaluation needs no rescaling (call it only in
    training). `rate` is the **drop** probability.

    Args:
      key: a PRNG key (`jax.random.key` or a legacy uint32 key).
      x: any floating array.
      rate: float in `[0, 1)` (Python or numpy scalar; static, not traced).

    Returns:
      An array like `x`. The mask multiplies (as in PyTorch): a NaN or inf in a dropped unit gives
    NaN, never 0, in the value and the gradient.
    """
    x = _checks.floating("dropout", "x", x)
    rate = check_rate("dropout", rate)
    if rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return _dropout(x, keep, rate)


def check_rate(op, rate) -> float:
    """`rate` as a float in [0, 1), or an error naming it the drop probability (op and layer)."""
    return _args.as_float(rate, op, "rate", minimum=0, below=1, note="the drop probability")


def _dropout_impl(x, keep, rate):
    """`x * mask / (1 - rate)` as a product, as PyTorch computes it: a dropped NaN or inf stays
    NaN (NaN * 0, inf * 0) instead of becoming a silent 0, as `where(keep, x, 0)` would make it
    (docs/correctness.md, "NaN and infinities")."""
    scale = jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))
    return x * scale


_vjp_dropout = jax.custom_vjp(_dropout_impl, nondiff_argnums=(2,))


def _dropout_fwd(x, keep, rate):
    return _dropout_impl(x, keep, rate), keep


def _dropout_bwd(rate, keep, g):
    """dx = g * mask / (1 - rate); the mask gets no gradient. Residual: the boolean mask."""
    return _dropout_impl(g, keep, rate), None


_vjp_dropout.defvjp(_dropout_fwd, _dropout_bwd)

_jvp_dropout = jax.custom_jvp(_dropout_impl, nondiff_argnums=(2,))


@_jvp_dropout.defjvp
def _dropout_jvp(rate, primals, tangents):
    """dy = dx * mask / (1 - rate)."""
    (x, keep), (t, _) = primals, tangents
    return _dropout_impl(x, keep, rate), _dropout_impl(t, keep, rate)


# Bound by the current binding (`_binding`): the map is linear in x with the mask fixed, so its
# JVP is itself (custom_jvp, the primitive binding) and its VJP too (custom_vjp).
_dropout = _binding.bound(_jvp_dropout, _vjp_dropout)
