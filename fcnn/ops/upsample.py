"""Upsampling (nearest and linear interpolation, any spatial rank), with hand-written rules.

`upsample(x, scale, method, align_corners)` follows `torch.nn.functional.interpolate`. Along a
spatial axis of size n resized to m (m = floor(n·scale), or `size`), output cell i reads the
source coordinate

    nearest                      s = floor(i·c), c = 1/scale (n/m when `size` is given), at
                                 most n − 1
    linear, align_corners=False  s = max((i + 0.5)·c − 0.5, 0)     (half-pixel centres)
    linear, align_corners=True   s = i·(n − 1)/(m − 1)             (0 when m = 1)

and linear interpolation takes y_i = (1 − λ)·x[i0] + λ·x[i1] with i0 = floor(s), i1 =
min(i0 + 1, n − 1), λ = s − i0 — PyTorch's formula, products included, so a NaN or ±inf
reaches the same cells as there (a weight of 0 times a NaN is NaN). "bilinear" and
"trilinear" are "linear" on 2 and 3 spatial axes, applied one axis after another.

Per axis y = U x with U fixed by the shapes (one 1 per row for nearest, two weights for
linear): the JVP is U ẋ and the transpose Uᵀ scatters each cotangent back with the same
weights (`.at[].add` per tap; for an integer nearest scale, a sum over each block). Uᵀ is
linear with transpose U, so the pair closes under every order of derivative.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from fcnn import _args
from fcnn.ops import _binding, _checks

METHODS = ("nearest", "linear", "bilinear", "trilinear")


class UpsampleConfig(NamedTuple):
    """Static: sizes in and out, the coordinate scale c per axis, the method, align_corners."""

    in_sizes: tuple[int, ...]
    out_sizes: tuple[int, ...]
    coord: tuple[float, ...]
    linear: bool
    align_corners: bool


def upsample(x, scale=None, *, size=None, method="nearest", align_corners=None):
    """Resize the spatial axes of `x` as `torch.nn.functional.interpolate` (module docstring).

    Args:
      x: `(N, *spatial, C)`, floating, one or more spatial axes.
      scale: a number > 0 or one per spatial axis; the output size is floor(n·scale).
      size: instead of `scale`, the output sizes (an int or one per spatial axis).
      method: "nearest", or "linear" (any rank; "bilinear" asks for 2 spatial axes and
        "trilinear" for 3, as PyTorch's names).
      align_corners: linear only, default False (half-pixel centres); True maps the corner
        cells onto each other.

    Returns:
      `(N, *out, C)`.
    """
    op = "upsample"
    x = _checks.floating(op, "x", x)
    d = x.ndim - 2
    if d < 1:
        raise ValueError(f"{op}: `x` must be (N, *spatial, C) with at least one spatial axis, "
                         f"got shape {tuple(x.shape)}.")
    method = _args.as_choice(method, op, "method", METHODS)
    need = {"bilinear": 2, "trilinear": 3}.get(method)
    if need is not None and need != d:
        raise ValueError(f"{op}: method {method!r} needs {need} spatial axes, x has {d} "
                         f"(shape {tuple(x.shape)}); 'linear' takes any number.")
    linear = method != "nearest"
    if align_corners is not None and not linear:
        raise ValueError(f"{op}: `align_corners` applies to linear interpolation only, got "
                         f"align_corners={align_corners!r} with method 'nearest'.")
    spatial = tuple(x.shape[1:-1])
    if (scale is None) == (size is None):
        raise ValueError(f"{op}: give exactly one of `scale` and `size`, got scale={scale!r}, "
                         f"size={size!r}.")
    if size is not None:
        out = _per_axis(op, "size", size, d, lambda v: _args.as_int(v, op, "size", minimum=1))
        coord = tuple(n / m for n, m in zip(spatial, out))
    else:
        factors = _per_axis(op, "scale", scale, d,
                            lambda v: _args.as_float(v, op, "scale", above=0.0))
        out = tuple(math.floor(n * f) for n, f in zip(spatial, factors))
        if min(out, default=1) < 1:
            raise ValueError(f"{op}: scale {scale!r} leaves an empty axis (sizes {spatial} -> "
                             f"{out}).")
        coord = tuple(1.0 / f for f in factors)
    cfg = UpsampleConfig(spatial, out, coord, linear, bool(align_corners))
    if out == spatial and all(c == 1.0 for c in coord):
        return x
    return _upsample(x, cfg)


def _per_axis(op, name, value, d, check):
    if isinstance(value, (list, tuple)):
        if len(value) != d:
            raise ValueError(f"{op}: `{name}` needs one entry per spatial axis ({d}), got "
                             f"{value!r}.")
        return tuple(check(v) for v in value)
    return (check(value),) * d


# ----------------------------------------------------------------------------- the maps


def _taps(n, m, coord, linear, align_corners):
    """Per output cell: the source cells and their weights (numpy, float64), one or two taps."""
    i = np.arange(m, dtype=np.float64)
    if not linear:
        src = np.minimum(np.floor(i * coord).astype(np.int64), n - 1)
        return [(src, np.ones(m))]
    if align_corners:
        s = i * ((n - 1) / (m - 1)) if m > 1 else np.zeros(m)
    else:
        s = np.maximum((i + 0.5) * coord - 0.5, 0.0)
    i0 = np.minimum(np.floor(s).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = s - i0
    return [(i0, 1.0 - lam), (i1, lam)]


def _along(a, axis, values):
    shape = [1] * a.ndim
    shape[axis] = len(values)
    return jnp.asarray(values.reshape(shape), a.dtype)


def _integer_nearest(n, m, coord, linear):
    """The repeat factor k when nearest upsampling repeats every cell k times (m = k·n)."""
    k = m // n if n else 0
    if linear or k < 1 or m != k * n:
        return 0
    src = np.minimum(np.floor(np.arange(m) * coord).astype(np.int64), n - 1)
    return k if np.array_equal(src, np.arange(m) // k) else 0


def _identity(n, m, cfg, axis):
    """Whether the map along `axis` is the identity (nearest, same size, unit scale)."""
    return not cfg.linear and n == m and cfg.coord[axis - 1] == 1.0


def _axis(x, axis, m, cfg):
    n, coord = x.shape[axis], cfg.coord[axis - 1]
    rep = _integer_nearest(n, m, coord, cfg.linear)
    if rep:
        return jnp.repeat(x, rep, axis=axis)
    y = None
    for src, weight in _taps(n, m, coord, cfg.linear, cfg.align_corners):
        term = jnp.take(x, src, axis=axis)
        if cfg.linear:
            term = term * _along(term, axis, weight)
        y = term if y is None else y + term
    return y


def _axis_t(ct, axis, n, cfg):
    m, coord = ct.shape[axis], cfg.coord[axis - 1]
    rep = _integer_nearest(n, m, coord, cfg.linear)
    if rep:  # the transpose of a repeat: each block's sum
        shape = (*ct.shape[:axis], n, rep, *ct.shape[axis + 1:])
        return jnp.sum(ct.reshape(shape), axis=axis + 1)
    out = jnp.zeros((*ct.shape[:axis], n, *ct.shape[axis + 1:]), ct.dtype)
    where = (slice(None),) * axis
    for src, weight in _taps(n, m, coord, cfg.linear, cfg.align_corners):
        part = ct * _along(ct, axis, weight) if cfg.linear else ct
        out = out.at[(*where, src)].add(part)
    return out


def _upsample_impl(x, cfg):
    for axis, (n, m) in enumerate(zip(cfg.in_sizes, cfg.out_sizes), start=1):
        if not _identity(n, m, cfg, axis):
            x = _axis(x, axis, m, cfg)
    return x


def _upsample_t_impl(ct, cfg):
    pairs = list(enumerate(zip(cfg.in_sizes, cfg.out_sizes), start=1))
    for axis, (n, m) in reversed(pairs):
        if not _identity(n, m, cfg, axis):
            ct = _axis_t(ct, axis, n, cfg)
    return ct


# ----------------------------------------------------------------------------- custom_vjp binding

def _upsample_primitives():
    """The primitives' module, imported when the op is first traced under the primitive binding
    (importing it registers the rules with JAX)."""
    from fcnn.ops import _upsample_primitives

    return _upsample_primitives


# each map's backward is the other (`_binding.linear_vjp_pair`)
_upsample = _binding.bound(lambda *a: _upsample_primitives().up(*a),
                           _binding.linear_vjp_pair(_upsample_impl, _upsample_t_impl))
