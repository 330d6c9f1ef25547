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


SPATIAL = {1: "W", 2: "H, W", 3: "D, H, W"}


def layout(rank: int) -> str:
    """The unbatched channels-last layout of `rank` spatial axes, for messages: `(H, W, C)`."""
    spatial = SPATIAL[rank] if rank in SPATIAL else ", ".join(f"S{i}" for i in range(rank))
    return f"({spatial}, C)"


def image(op: str, name: str, a, rank: int = 2) -> tuple[jnp.ndarray, bool]:
    """Validate a channels-last array of `rank` spatial axes, batched `(N, *spatial, C)` or not
    (`(*spatial, C)`: NHWC / HWC in 2-D); return it batched and whether it was batched."""
    a = floating(op, name, a)
    if a.ndim == rank + 2:
        return a, True
    if a.ndim == rank + 1:
        return a[None], False
    hint = " Add a channel axis: x[..., None]." if a.ndim == rank else ""
    unbatched = layout(rank)
    batched = "(N, " + unbatched[1:]
    raise ValueError(
        f"{op}: `{name}` must have rank {rank + 1} {unbatched} or {rank + 2} {batched}, "
        f"got shape {tuple(a.shape)}.{hint}"
    )


def same_dtype(*arrays) -> list[jnp.ndarray]:
    """Promote floating arrays to their common dtype (jnp rules)."""
    dtype = jnp.result_type(*arrays)
    return [a.astype(dtype) for a in arrays]
