"""Shape and dtype checks shared by the ops: plain Python on ``.shape``/``.dtype``, trace time."""

from __future__ import annotations

import jax.numpy as jnp


def floating(op: str, name: str, a) -> jnp.ndarray:
    """``a`` as an array of a floating dtype, or a TypeError naming ``op`` and ``name``."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(
            f"{op}: `{name}` must be a floating-point array, got dtype {a.dtype}. "
            f"Cast it first, e.g. {name}.astype(jnp.float32)."
        )
    return a


def image(op: str, name: str, a) -> tuple[jnp.ndarray, bool]:
    """Validate an NHWC / HWC image; return it batched and whether it was batched."""
    a = floating(op, name, a)
    if a.ndim == 4:
        return a, True
    if a.ndim == 3:
        return a[None], False
    hint = " Add a channel axis: x[..., None]." if a.ndim == 2 else ""
    raise ValueError(
        f"{op}: `{name}` must have rank 3 (H, W, C) or 4 (N, H, W, C), "
        f"got shape {tuple(a.shape)}.{hint}"
    )


def same_dtype(*arrays) -> list[jnp.ndarray]:
    """Promote floating arrays to their common dtype (jnp rules)."""
    dtype = jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]
