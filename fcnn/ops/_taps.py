"""Window taps: reading tap ``t`` of every window as one strided slice, and its adjoint.

Tap ``t = (t_1, ..., t_r)`` of a window with stride s and dilation d reads the padded input at
``i_k*s_k + t_k*d_k`` along spatial axis k for every output position ``i``. Reading is
``lax.slice``; the adjoint writes an ``(N, *out, C)`` array back to those cells of the unpadded
input with one ``lax.pad`` (interior ``s - 1``; negative edges drop the cells that fell in
padding). Pooling's backward and the im2col/col2im convolution are built from these, in any
number of spatial axes; ``write_all`` is the adjoint of reading every tap of a window.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
from jax import lax


def all_taps(window):
    """Every tap of a window, in row-major order (the kernel's flattened order)."""
    return list(itertools.product(*(range(k) for k in window)))


def pad(x, pads, fill=0.0):
    """Pad the spatial axes of channels-last `x` by explicit `((low, high), ...)`."""
    config = ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0))
    return lax.pad(x, jnp.array(fill, x.dtype), config)


def read(xp, tap, out, stride, dilation=None):
    """Tap `tap` of every window of the padded `xp`: `(N, *out, C)`."""
    dilation = dilation or (1,) * len(tap)
    starts = [t * d for t, d in zip(tap, dilation)]
    limit = (xp.shape[0], *(a + (o - 1) * s + 1 for a, o, s in zip(starts, out, stride)),
             xp.shape[-1])
    return lax.slice(xp, (0, *starts, 0), limit, (1, *stride, 1))


def write(v, tap, in_sizes, pads, stride, dilation=None):
    """Adjoint of `read` after padding: scatter `v: (N, *out, C)` into zeros of the unpadded
    `(N, *in_sizes, C)` at `i*s + t*d - p_low` along every spatial axis."""
    dilation = dilation or (1,) * len(tap)
    config = []
    for t, d, n, o, s, (lo, _) in zip(tap, dilation, in_sizes, v.shape[1:-1], stride, pads):
        first = t * d - lo
        config.append((first, n - first - ((o - 1) * s + 1), s - 1))
    return lax.pad(v, jnp.array(0, v.dtype), ((0, 0, 0), *config, (0, 0, 0)))


def write_all(values, window, in_sizes, pads, stride, dilation=None):
    """Adjoint of reading every tap: `values[i]` (each `(N, *out, C)`) for the i-th tap of
    `all_taps(window)`, written back to the cells that tap reads and summed, as the unpadded
    `(N, *in_sizes, C)`.

    At stride 1 each tap's block is a plain window of the padded input, so the blocks are added
    in place into one buffer (faster than summing a padded copy per tap, e.g. LeNet's conv dX;
    docs/performance.md); otherwise each is written with `write` and the copies are summed."""
    dilation = dilation or (1,) * len(window)
    taps = all_taps(window)
    if any(s != 1 for s in stride):
        return sum(write(v, t, in_sizes, pads, stride, dilation) for v, t in zip(values, taps))
    out = values[0].shape[1:-1]
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_sizes, pads))
    acc = jnp.zeros((values[0].shape[0], *padded, values[0].shape[-1]), values[0].dtype)
    for v, tap in zip(values, taps):
        at = tuple(slice(t * d, t * d + o) for t, d, o in zip(tap, dilation, out))
        acc = acc.at[(slice(None), *at)].add(v)
    return acc[(slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(pads, in_sizes)))]
