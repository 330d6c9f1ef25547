"""Bias addition over the last axis, with its hand-written rule (db = sum of g over the rest)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_bias(op: str, b, features: int) -> jnp.ndarray:
    if b.ndim != 1 or b.shape[0] != features:
        raise ValueError(
            f"{op}: `b` must have shape ({features},) (one per output feature), "
            f"got {tuple(b.shape)}."
        )
    return b


@jax.custom_vjp
def bias_add(y, b):
    """``y + b`` broadcast over the last axis; ``y: (..., C)``, ``b: (C,)``."""
    return y + b.reshape((1,) * (y.ndim - 1) + b.shape)


def _bias_add_fwd(y, b):
    return bias_add(y, b), None


def _bias_add_bwd(_, g):
    """dy = g; db[c] = sum over every axis but the last of g[..., c]."""
    return g, jnp.sum(g, axis=tuple(range(g.ndim - 1)))


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)
