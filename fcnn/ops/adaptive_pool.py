"""Adaptive average pooling, PyTorch's bins, with hand-written rules.

`adaptive_avg_pool(x, output_size)` averages each spatial axis of `(N, *spatial, C)` down (or
up) to a given size. Along an axis of size n pooled to m, output cell i is the mean of input
cells [start_i, end_i) with

    start_i = floor(i·n / m),   end_i = ceil((i + 1)·n / m)

(PyTorch's `AdaptiveAvgPool1d/2d/3d`; neighbouring bins share a cell when m does not divide n,
and with m > n cells repeat). Per axis y = A x, A[i, j] = 1 / (end_i − start_i) on the bin;
the axes are pooled one after another. The JVP is A ẋ; the transpose Aᵀ sends ct_i / len_i to
every cell of bin i. Where m divides n the bins tile: a reshape and a mean forward, a
repeat backward. Otherwise each bin is read as up to L taps, tap t the cell start_i + t when
t < len_i (a select, never a product with 0, so a NaN stays in its own bins), and the
transpose adds the same selects back (a scatter-add per tap). Aᵀ is linear with transpose A:
the pair closes, as the pools' do.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from fcnn import _args
from fcnn.ops import _binding, _checks


class AdaptiveConfig(NamedTuple):
    """Static: the input's spatial sizes and the output's."""

    in_sizes: tuple[int, ...]
    out_sizes: tuple[int, ...]


def adaptive_avg_pool(x, output_size):
    """Average each spatial axis of `x` to `output_size` with PyTorch's bins (module docstring).

    Args:
      x: `(N, *spatial, C)`, floating, one or more spatial axes.
      output_size: an int (every spatial axis), or one entry per spatial axis: an int >= 1,
        or None to keep that axis' size.

    Returns:
      `(N, *output_size, C)`.
    """
    op = "adaptive_avg_pool"
    x = _checks.floating(op, "x", x)
    if x.ndim < 3:
        raise ValueError(f"{op}: `x` must be (N, *spatial, C) with at least one spatial axis, "
                         f"got shape {tuple(x.shape)}.")
    spatial = tuple(x.shape[1:-1])
    if isinstance(output_size, (list, tuple)):
        if len(output_size) != len(spatial):
            raise ValueError(f"{op}: `output_size` needs one entry per spatial axis "
                             f"({len(spatial)}), got {output_size!r}.")
        sizes = tuple(n if m is None else _args.as_int(m, op, "output_size", minimum=1)
                      for n, m in zip(spatial, output_size))
    else:
        sizes = (_args.as_int(output_size, op, "output_size", minimum=1),) * len(spatial)
    for axis, n in enumerate(spatial):
        if n == 0:
            raise ValueError(f"{op}: spatial axis {axis} is empty: nothing to average.")
    cfg = AdaptiveConfig(spatial, sizes)
    return x if sizes == spatial else _adaptive(x, cfg)


def _bins(n, m):
    i = np.arange(m)
    start = (i * n) // m
    end = -((-(i + 1) * n) // m)  # ceil
    return start, end - start


def _along(a, axis, values):
    """`values` (one per cell of `axis`) shaped to broadcast against `a`."""
    shape = [1] * a.ndim
    shape[axis] = len(values)
    return jnp.asarray(values.reshape(shape), a.dtype)


def _pool_axis(x, axis, m):
    n = x.shape[axis]
    if n % m == 0:  # the bins tile
        k = n // m
        shape = (*x.shape[:axis], m, k, *x.shape[axis + 1:])
        return jnp.sum(x.reshape(shape), axis=axis + 1) / jnp.asarray(k, x.dtype)
    start, length = _bins(n, m)
    total = None
    for t in range(int(length.max())):
        taps = jnp.take(x, np.minimum(start + t, n - 1), axis=axis)
        taps = jnp.where(_along(taps, axis, t < length) > 0, taps, jnp.zeros((), x.dtype))
        total = taps if total is None else total + taps
    return total / _along(total, axis, length)


def _unpool_axis(ct, axis, n):
    """The transpose of `_pool_axis` along `axis`: ct (size m there) -> size n."""
    m = ct.shape[axis]
    if n % m == 0:
        k = n // m
        return jnp.repeat(ct / jnp.asarray(k, ct.dtype), k, axis=axis)
    start, length = _bins(n, m)
    share = ct / _along(ct, axis, length)
    out = jnp.zeros((*ct.shape[:axis], n, *ct.shape[axis + 1:]), ct.dtype)
    where = (slice(None),) * axis
    for t in range(int(length.max())):
        part = jnp.where(_along(share, axis, t < length) > 0, share, jnp.zeros((), ct.dtype))
        out = out.at[(*where, np.minimum(start + t, n - 1))].add(part)
    return out


def _pool_impl(x, cfg):
    for axis, (n, m) in enumerate(zip(cfg.in_sizes, cfg.out_sizes), start=1):
        if n != m:
            x = _pool_axis(x, axis, m)
    return x


def _unpool_impl(ct, cfg):
    pairs = list(enumerate(zip(cfg.in_sizes, cfg.out_sizes), start=1))
    for axis, (n, m) in reversed(pairs):
        if n != m:
            ct = _unpool_axis(ct, axis, n)
    return ct


# ----------------------------------------------------------------------------- custom_vjp binding

def _adaptive_primitives():
    """The primitives' module, imported when the op is first traced under the primitive binding
    (importing it registers the rules with JAX)."""
    from fcnn.ops import _adaptive_primitives

    return _adaptive_primitives


# each map's backward is the other (`_binding.linear_vjp_pair`)
_adaptive = _binding.bound(lambda *a: _adaptive_primitives().pool(*a),
                           _binding.linear_vjp_pair(_pool_impl, _unpool_impl))
