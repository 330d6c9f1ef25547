"""Padding of the spatial axes, four modes, with hand-written rules.

`pad(x, padding, mode)` is linear in x. Along one spatial axis of size n, padded by (lo, hi),
each output cell i in [-lo, n + hi) copies an input cell src(i) or is 0:

    zeros       src(i) = i for 0 <= i < n; the border is 0
    reflect     src(i) = -i for i < 0, 2(n - 1) - i for i >= n (the edge is not repeated)
    replicate   src(i) = clamp(i, 0, n - 1)
    circular    src(i) = i mod n

so y = P x, P a 0/1 matrix per axis, the axes padded one after another. Its JVP is P ẋ; its
transpose P^T folds the padded border back onto the cells it copied:

    zeros       ct's core (the border is dropped)
    reflect     the core, plus the border reversed onto cells 1..lo and n-1-hi..n-2
    replicate   the core, plus each border's sum onto cell 0 and cell n - 1
    circular    the core, plus the left border onto the last lo cells and the right onto the
                first hi

written with slices, flips and `lax.pad` (no gather or scatter), the axes in reverse order. P^T
is linear too: its JVP is itself and its transpose is P, so every order of derivative runs
these two maps. A NaN or ±inf in x reaches every cell that copies it; zeros are exact zeros.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from fcnn.ops import _binding, _checks

MODES = ("zeros", "reflect", "replicate", "circular")


class PadConfig(NamedTuple):
    """Static, hashable: one (lo, hi) per spatial axis, and the mode."""

    pads: tuple[tuple[int, int], ...]
    mode: str


def pad(x, padding, mode="zeros"):
    """Pad the spatial axes of `x`, channels-last, with `mode`.

    Args:
      x: `(N, *spatial, C)`, floating, with one or more spatial axes (`(N, L, C)`, `(N, H, W, C)`,
        `(N, D, H, W, C)`).
      padding: an int (every side of every spatial axis), one entry per spatial axis (an int:
        both sides; a pair: `(lo, hi)`), all non-negative.
      mode: "zeros", "reflect" (mirror without repeating the edge: each pad < the axis size),
        "replicate" (the edge repeated) or "circular" (wrapped: each pad <= the axis size).
        PyTorch's `F.pad` modes "constant" (0), "reflect", "replicate" and "circular".

    Returns:
      `(N, *(n + lo + hi), C)`.
    """
    cfg = _config("pad", x, padding, mode)
    return _pad(x, cfg) if any(lo or hi for lo, hi in cfg.pads) else x


def _config(op, x, padding, mode) -> PadConfig:
    x = _checks.floating(op, "x", x)
    if x.ndim < 3:
        raise ValueError(f"{op}: `x` must be (N, *spatial, C) with at least one spatial axis, "
                         f"got shape {tuple(x.shape)}.")
    if mode not in MODES:
        raise ValueError(f"{op}: `mode` must be one of {', '.join(map(repr, MODES))}, got "
                         f"{mode!r}.")
    spatial = x.shape[1:-1]
    pads = _pads(op, padding, len(spatial))
    for axis, (n, (lo, hi)) in enumerate(zip(spatial, pads)):
        limit = {"reflect": n - 1, "circular": n}.get(mode)
        if limit is not None and max(lo, hi) > limit:
            need = "smaller than" if mode == "reflect" else "at most"
            raise ValueError(f"{op}: mode {mode!r} needs each pad {need} the axis size; spatial "
                             f"axis {axis} has size {n}, padded by ({lo}, {hi}).")
        if mode == "replicate" and n == 0 and (lo or hi):
            raise ValueError(f"{op}: mode 'replicate' cannot pad the empty spatial axis {axis}.")
    return PadConfig(pads, mode)


def _pads(op, padding, rank):
    def as_int(v):
        if isinstance(v, bool) or not isinstance(v, (int, jnp.integer)) and not (
                hasattr(v, "shape") and v.shape == () and jnp.issubdtype(v.dtype, jnp.integer)):
            raise TypeError(f"{op}: `padding` holds ints, got {type(v).__name__} {v!r}.")
        v = int(v)
        if v < 0:
            raise ValueError(f"{op}: `padding` must be non-negative, got {padding!r}.")
        return v

    if not isinstance(padding, (list, tuple)):
        return ((as_int(padding),) * 2,) * rank
    if len(padding) != rank:
        raise ValueError(f"{op}: `padding` needs one entry per spatial axis ({rank}), got "
                         f"{padding!r}.")
    out = []
    for p in padding:
        if isinstance(p, (list, tuple)):
            if len(p) != 2:
                raise ValueError(f"{op}: each `padding` pair is (lo, hi), got {p!r}.")
            out.append((as_int(p[0]), as_int(p[1])))
        else:
            out.append((as_int(p),) * 2)
    return tuple(out)


# ----------------------------------------------------------------------------- the two maps


def _slice(a, axis, start, stop):
    return lax.slice_in_dim(a, start, stop, axis=axis)


def _widen(a, axis, lo, hi):
    """`a` with `lo` and `hi` zeros added along `axis`."""
    config = [(0, 0, 0)] * a.ndim
    config[axis] = (lo, hi, 0)
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def _pad_axis(x, axis, lo, hi, mode):
    n = x.shape[axis]
    if mode == "zeros":
        return _widen(x, axis, lo, hi)
    if mode == "reflect":
        left = jnp.flip(_slice(x, axis, 1, lo + 1), axis)
        right = jnp.flip(_slice(x, axis, n - 1 - hi, n - 1), axis)
    elif mode == "replicate":
        def edge(i, k):
            return jnp.repeat(_slice(x, axis, i, i + 1), k, axis=axis)

        left, right = edge(0, lo), edge(n - 1, hi)
    else:  # circular
        left, right = _slice(x, axis, n - lo, n), _slice(x, axis, 0, hi)
    return jnp.concatenate([left, x, right], axis=axis)


def _fold_axis(ct, axis, lo, hi, mode):
    """The transpose of `_pad_axis` along `axis`: ct (size lo + n + hi there) -> size n."""
    n = ct.shape[axis] - lo - hi
    core = _slice(ct, axis, lo, lo + n)
    if mode == "zeros" or n == 0:
        return core
    left, right = _slice(ct, axis, 0, lo), _slice(ct, axis, lo + n, lo + n + hi)
    if mode == "reflect":  # border cell -k copied cell k; cell n-1+k copied cell n-1-k
        parts = [_widen(jnp.flip(left, axis), axis, 1, n - 1 - lo),
                 _widen(jnp.flip(right, axis), axis, n - 1 - hi, 1)]
    elif mode == "replicate":
        parts = [_widen(jnp.sum(left, axis, keepdims=True), axis, 0, n - 1),
                 _widen(jnp.sum(right, axis, keepdims=True), axis, n - 1, 0)]
    else:  # circular: the left border copied the last lo cells, the right the first hi
        parts = [_widen(left, axis, n - lo, 0), _widen(right, axis, 0, n - hi)]
    for part in parts:
        core = core + part
    return core


def _pad_impl(x, cfg):
    for axis, (lo, hi) in enumerate(cfg.pads, start=1):
        if lo or hi:
            x = _pad_axis(x, axis, lo, hi, cfg.mode)
    return x


def _fold_impl(ct, cfg):
    for axis, (lo, hi) in reversed(list(enumerate(cfg.pads, start=1))):
        if lo or hi:
            ct = _fold_axis(ct, axis, lo, hi, cfg.mode)
    return ct


# ----------------------------------------------------------------------------- custom_vjp binding

def _pad_primitives():
    """The primitives' module, imported when the op is first traced under the primitive binding
    (importing it registers the rules with JAX)."""
    from fcnn.ops import _pad_primitives

    return _pad_primitives


# each map's backward is the other (`_binding.linear_vjp_pair`)
_pad = _binding.bound(lambda *a: _pad_primitives().pad(*a),
                      _binding.linear_vjp_pair(_pad_impl, _fold_impl))
