"""Bias addition over the last axis, with its hand-written rule (db = sum of g over the rest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fcnn.ops import _binding


def check_bias(op: str, b, features: int) -> jnp.ndarray:
    if b.ndim != 1 or b.shape[0] != features:
        raise ValueError(
            f"{op}: `b` must have shape ({features},) (one per output feature), "
            f"got {tuple(b.shape)}."
        )
    return b


def _add(y, b):
    return y + b.reshape((1,) * (y.ndim - 1) + b.shape)


_vjp_bias_add = jax.custom_vjp(_add)


def _bias_add_fwd(y, b):
    return _add(y, b), None


def _bias_add_bwd(_, g):
    """dy = g; db[c] = sum over every axis but the last of g[..., c]."""
    return g, jnp.sum(g, axis=tuple(range(g.ndim - 1)))


_vjp_bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)

_jvp_bias_add = jax.custom_jvp(_add)


@_jvp_bias_add.defjvp
def _bias_add_jvp(primals, tangents):
    """The map is linear: its JVP is itself, dy + db broadcast over the leading axes (reverse
    mode transposes that sum: dy = g, db = the sum of g over the leading axes, as above)."""
    return _add(*primals), _add(*tangents)


_bound_bias_add = _binding.bound(_jvp_bias_add, _vjp_bias_add)


def bias_add(y, b):
    """``y + b`` broadcast over the last axis; ``y: (..., C)``, ``b: (C,)``; bound by the
    current binding (`_binding`)."""
    return _bound_bias_add(y, b)
