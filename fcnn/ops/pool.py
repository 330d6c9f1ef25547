"""Max and average pooling with hand-written rules, in 1, 2 or 3 spatial axes (`max_pool1d`...
`avg_pool3d`; the same maps and rules in every rank, the fast 2-D paths below in 2-D only).

When the windows tile the input (stride == window, the common 2x2/2 case) the backward writes
every window's block at once with one reshape (`_untile`); overlapping windows take the general
path below.

Both backward passes route the upstream gradient through the window "taps": tap (a, b) of the
window reads the padded input at rows ``i*s + a`` and columns ``j*s + b`` for every output
``(i, j)``. Reading every tap is a strided slice; its adjoint writes a ``(H_out, W_out)`` array
back to those cells (``lax.pad`` with interior ``s - 1``). The pairs of linear maps close under
differentiation:

    avg_pool(x)                      <-> avg_pool_t(g)        (adjoint of each other)
    max_scatter(x, g): g to argmax   <-> max_gather(x, ct): ct read at argmax
"""

from __future__ import annotations

import functools
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import _args
from fcnn.ops import _binding, _checks, onednn, tuning
from fcnn.ops import _taps as _taps_mod


class PoolConfig(NamedTuple):
    """Static, hashable configuration of a pooling window (explicit padding)."""

    window: tuple[int, ...]  # one entry per spatial axis
    stride: tuple[int, ...]
    padding: tuple[_args.Pair, ...]


def max_pool1d(x, window, stride=None, padding=0):
    """`max_pool2d` of a signal: x `(N, W, C)` or `(W, C)`; window, stride an int or 1-tuple,
    padding an int, `(p,)`, `((low, high),)`, "SAME" or "VALID"."""
    return _max("max_pool1d", 1, x, window, stride, padding)


def max_pool2d(x, window, stride=None, padding=0):
    """Max pooling; padded cells are -inf and lose to every real value but a -inf. A window
    holding a NaN gives NaN (as in PyTorch), and its gradient goes to its first NaN.

    Args:
      x: `(N, H, W, C)` or `(H, W, C)`, floating.
      window: int or pair.
      stride: int or pair; defaults to `window` (non-overlapping).
      padding: int, pair, `((top, bottom), (left, right))`, "SAME" or "VALID"; each side must be
        smaller than the window. Ints and pairs may be numpy values, as in `conv2d`.

    Returns:
      `(N, H_out, W_out, C)` (or unbatched). The backward sends each window's gradient to its
      maximum; on ties to the first in row-major window order.
    """
    return _max("max_pool2d", 2, x, window, stride, padding)


def max_pool3d(x, window, stride=None, padding=0):
    """`max_pool2d` of a volume: x `(N, D, H, W, C)` or `(D, H, W, C)`; window, stride an int
    or triple, padding as `conv3d`'s. Ties and NaN: the first in row-major window order."""
    return _max("max_pool3d", 3, x, window, stride, padding)


def avg_pool1d(x, window, stride=None, padding=0):
    """`avg_pool2d` of a signal `(N, W, C)` or `(W, C)`."""
    return _avg("avg_pool1d", 1, x, window, stride, padding)


def avg_pool2d(x, window, stride=None, padding=0):
    """Average pooling; padded zeros count in the mean (the divisor is always the window area).

    Args:
      x: `(N, H, W, C)` or `(H, W, C)`, floating.
      window, stride, padding: as `max_pool2d`.

    Returns:
      `(N, H_out, W_out, C)` (or unbatched).
    """
    return _avg("avg_pool2d", 2, x, window, stride, padding)


def avg_pool3d(x, window, stride=None, padding=0):
    """`avg_pool2d` of a volume `(N, D, H, W, C)` or `(D, H, W, C)`."""
    return _avg("avg_pool3d", 3, x, window, stride, padding)


def _max(op, rank, x, window, stride, padding):
    x, batched, cfg = _prepare(op, rank, x, window, stride, padding)
    y = _max_pool(x, cfg)
    return y if batched else y[0]


def _avg(op, rank, x, window, stride, padding):
    x, batched, cfg = _prepare(op, rank, x, window, stride, padding)
    y = _avg_pool(x, cfg)
    return y if batched else y[0]


def _prepare(op, rank, x, window, stride, padding):
    x, batched = _checks.image(op, "x", x, rank)
    window = _args.as_tuple(window, op, "window", rank)
    stride = window if stride is None else _args.as_tuple(stride, op, "stride", rank)
    pads = _args.as_padding(padding, op, x.shape[1:-1], window, stride)
    for (lo, hi), k in zip(pads, window):
        if max(lo, hi) >= k:
            raise ValueError(
                f"{op}: `padding` must be smaller than the window on each side (a window of "
                f"padding only has nothing to pool), got padding {padding!r} for window {window}."
            )
    _args.check_fits(op, x.shape[1:-1], window, pads, dilated=False)
    return x, batched, PoolConfig(window, stride, pads)


# ----------------------------------------------------------------------------- taps


def _out_hw(in_hw, cfg):
    return tuple(_args.output_size(*a) for a in zip(in_hw, cfg.window, cfg.stride, cfg.padding))


def _taps(x, cfg, fill):
    """Yield `(t, x_t)`: the t-th tap (row-major) of every window, `x_t: (N, *out, C)`."""
    xp = _taps_mod.pad(x, cfg.padding, fill)
    out = _out_hw(x.shape[1:-1], cfg)
    for t, tap in enumerate(_taps_mod.all_taps(cfg.window)):
        yield t, _taps_mod.read(xp, tap, out, cfg.stride)


def _rank2(cfg) -> bool:
    """Whether the 2-D fast paths apply."""
    return len(cfg.window) == 2


def _untile(tiled, in_hw, cfg):
    """`(N, H_out, kh, W_out, kw, C)` blocks -> `(N, H, W, C)`: merge, drop the padding, and
    zero-fill the rows/cols the floor left out."""
    n, ho, kh, wo, kw, c = tiled.shape
    (pt, _), (pl, _) = cfg.padding
    edges = ((0, 0, 0), (-pt, in_hw[0] + pt - ho * kh, 0), (-pl, in_hw[1] + pl - wo * kw, 0),
             (0, 0, 0))
    return lax.pad(tiled.reshape(n, ho * kh, wo * kw, c), jnp.array(0, tiled.dtype), edges)


def _write_all(values, in_hw, cfg):
    """Adjoint of reading every tap (`_taps.write_all` with this pool's window and stride)."""
    return _taps_mod.write_all(values, cfg.window, in_hw, cfg.padding, cfg.stride)


def _tap_ids(cfg):
    """Row-major tap index of each cell of a block, shaped `(1, 1, kh, 1, kw, 1)`."""
    kh, kw = cfg.window
    return np.arange(kh * kw, dtype=np.int32).reshape(1, 1, kh, 1, kw, 1)


def _window_dims(cfg):
    return (1, *cfg.window, 1), (1, *cfg.stride, 1), ((0, 0), *cfg.padding, (0, 0))


# ----------------------------------------------------------------------------- average


def _avg_pool_impl(x, cfg):
    dims, strides, pads = _window_dims(cfg)
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    return total / math.prod(cfg.window)


def _avg_pool_t_impl(g, in_hw, cfg):
    area = math.prod(cfg.window)
    g = g / area
    if cfg.stride == cfg.window and _rank2(cfg):  # tiles: a block gets its window's g
        kh, kw = cfg.window
        n, ho, wo, c = g.shape
        return _untile(jnp.broadcast_to(g[:, :, None, :, None, :], (n, ho, kh, wo, kw, c)),
                       in_hw, cfg)
    return _write_all([g] * area, in_hw, cfg)


# ----------------------------------------------------------------------------- custom_vjp binding


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _vjp_avg_pool(x, cfg):
    return _avg_pool_impl(x, cfg)


# Each fwd computes its output through the op itself: reverse over reverse differentiates fwd
# (conv.py says why).
def _avg_pool_fwd(x, cfg):
    return _vjp_avg_pool(x, cfg), x.shape[1:-1]


def _avg_pool_bwd(cfg, in_hw, g):
    """dx[p] = sum over the windows containing p of g / (kh * kw): every tap of g written back
    to its input cells, padded cells dropped. Residuals: the input's (H, W) only."""
    return (_avg_pool_t(g, in_hw, cfg),)


_vjp_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool_t(g, in_hw, cfg):
    return _avg_pool_t_impl(g, in_hw, cfg)


def _avg_pool_t_fwd(g, in_hw, cfg):
    return _avg_pool_t(g, in_hw, cfg), None


def _avg_pool_t_bwd(in_hw, cfg, _, ct):
    """The adjoint of the adjoint: d/dg = avg_pool(ct)."""
    return (_vjp_avg_pool(ct, cfg),)


_avg_pool_t.defvjp(_avg_pool_t_fwd, _avg_pool_t_bwd)


# ----------------------------------------------------------------------------- max


def _max_pool_impl(x, cfg):
    """The elementwise maximum of the window's taps (strided slices of the input padded with
    -inf), one loop over the output that XLA fuses and splits over its threads; 1.5-7x faster
    than XLA's `reduce_window` on 3x3 stride-2 windows of a materialised input, 1.2-1.5x on
    2x2 tiles. Never `reduce_window` alone, nor `jnp.max` over blocks: on the CPU XLA hands both
    to YNNPACK, whose maximum returns the largest number of a window holding a NaN (measured
    with jax 0.10.2: none of the 27,739 windows holding a NaN of a 128x28x28x6 input pooled to
    NaN; docs/correctness.md). `jnp.maximum` keeps the NaN.

    Windows that tile, without the native kernels: `select(isnan(taps), taps, reduce_window)`,
    the same values. With the taps alone XLA fused a `taps` convolution (a grey or RGB first
    layer's) into the pool's forward, its backward's argmax and the ReLU mask, computing it
    three times (LeNet-5's step under the table 18.8 against 9.1 ms); `reduce_window`'s
    reader keeps it in memory. With them, `taps` convolutions hand over their output through a
    native call (`convolution.algorithms.materialized`) and the taps alone are faster (LeNet-5 4.74
    against 5.42 ms, CIFAR net 84.8 against 87.3; docs/performance.md)."""
    taps = functools.reduce(jnp.maximum, (xs for _, xs in _taps(x, cfg, -jnp.inf)))
    if any(s < k for s, k in zip(cfg.stride, cfg.window)) or _after_native(x):
        return taps
    dims, strides, pads = _window_dims(cfg)
    window_max = lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pads)
    return jnp.where(taps != taps, taps, window_max)  # (a `maximum` of the two: YNNPACK's)


def _after_native(x) -> bool:
    """Whether a pool of `x` runs where the native kernels do (loaded, float32, not lowered
    for export), whose `taps` convolutions hold their output in memory."""
    return onednn.AVAILABLE and x.dtype == jnp.float32 and not tuning.exporting()


# The first-maximum rule: each window's gradient goes to its first maximum in row-major window
# order, a NaN counting as larger than every number (the first NaN of a window holding one:
# the forward returns that NaN, as `jnp.maximum` and PyTorch's max pool do, and
# PyTorch sends the gradient there too; XLA's select-and-scatter sends it to the largest number,
# away from the NaN). Three formulations of the same rule, each the fastest where it is used
# (docs/performance.md, "Max pool backward and NaN"): `jnp.argmax` over the stacked taps for
# narrow tiles, a scan for the rest, which for overlapping windows runs in a conditional that
# takes the NaN-aware comparison only when x holds a NaN.


def _first_max(taps, nan_aware=True):
    """The index `t` of each window's first maximum over `taps`, `(t, x_t)` pairs in row-major
    window order; `nan_aware=False` for an input known to hold no NaN."""
    best, index = None, None
    for t, xs in taps:
        if best is None:
            best, index = xs, jnp.zeros(xs.shape, jnp.int32)
        else:
            # strict (an equal value later in the window does not win); a NaN wins over a
            # number, never over an earlier NaN (best == best is False only for a NaN)
            wins = ~(xs <= best) & (best == best) if nan_aware else xs > best
            best = jnp.where(wins, xs, best)
            index = jnp.where(wins, t, index)
    return index


def _argmax_taps(x, cfg):
    """Row-major window index of each window's first maximum, `(N, H_out, W_out, C)`.

    Overlapping windows: the scan inside `lax.cond` on whether x holds a NaN (one sum over x:
    NaN then, and for +inf beside -inf, where the NaN-aware scan gives the same index). The
    conditional also makes XLA compute the index once, where fused into the per-tap writes it
    was recomputed for each tap: 3x3 stride-2 windows' backward 1.3-1.4x faster than the strict
    scan fused, against 1.3x slower for the NaN-aware scan fused. Tiling windows: the NaN-aware
    scan fused (1.0-1.2x the strict one; the conditional made them up to 2.4x slower)."""

    def scan(x, nan_aware):
        return _first_max(_taps(x, cfg, -jnp.inf), nan_aware)

    if all(s < k for s, k in zip(cfg.stride, cfg.window)):
        return lax.cond(jnp.isnan(jnp.sum(x)), lambda x: scan(x, True), lambda x: scan(x, False),
                        x)
    return scan(x, True)


def _max_scatter_tiles(x, g, cfg):
    """`_max_scatter_impl` for windows that tile an unpadded input with fewer than 16 channels:
    the input viewed as `(N, H_out, kh, W_out, kw * C)`, whose last axis holds a window row's
    taps side by side, so every tap is a slice along that axis and dX is assembled by one
    concatenation per window row and one stack of the rows — contiguous writes of `kw * C`
    values where the per-tap writes stride by the window (LeNet-5's first pool, 6 channels:
    2.5x faster on AVX-512, 1.4x on AVX2; docs/performance.md). Rows and columns the floor left
    out get 0. The same first-maximum rule as `_argmax_taps`, here `jnp.argmax` (the first
    maximum, NaN first) over the stacked taps: 0.9-1.1x the strict scan, where the NaN-aware
    scan took 1.5x (its chain is recomputed for every written cell of these narrow loops)."""
    (kh, kw), (n, h, w, c), (ho, wo) = cfg.window, x.shape, g.shape[1:3]
    rows = x[:, : ho * kh, : wo * kw].reshape(n, ho, kh, wo, kw * c)
    index = _tile_argmax(rows, cfg)
    zero = jnp.zeros((), g.dtype)
    dx = jnp.stack([jnp.concatenate([jnp.where(index == a * kw + b, g, zero) for b in range(kw)],
                                    axis=-1) for a in range(kh)], axis=2)
    dx = dx.reshape(n, ho * kh, wo * kw, c)
    return lax.pad(dx, zero, ((0, 0, 0), (0, h - ho * kh, 0), (0, w - wo * kw, 0), (0, 0, 0)))


def _row_taps(rows, cfg):
    """`(t, x_t)` for the taps of `rows`, `(N, H_out, kh, W_out, kw * C)`, row-major."""
    (kh, kw), c = cfg.window, rows.shape[-1] // cfg.window[1]
    return [(a * kw + b, rows[:, :, a, :, b * c:(b + 1) * c]) for a in range(kh)
            for b in range(kw)]


def _tile_argmax(rows, cfg):
    """`_max_scatter_tiles`'s index: `jnp.argmax` over the stacked taps of `rows`."""
    return jnp.argmax(jnp.stack([xs for _, xs in _row_taps(rows, cfg)], axis=-1), axis=-1)


def _max_scatter_impl(x, g, cfg):
    tiles = cfg.stride == cfg.window and _rank2(cfg)
    if tiles and x.shape[3] < 16 and cfg.padding == ((0, 0), (0, 0)):
        return _max_scatter_tiles(x, g, cfg)
    index = _argmax_taps(x, cfg)
    zero = jnp.zeros((), g.dtype)
    # Tiles with 32+ channels: no cell is in two windows, one select writes every block (far
    # faster than XLA's select-and-scatter there). With 16-31 channels the 6-D select vectorises
    # badly and the per-tap writes below were faster (measured: docs/performance.md).
    if tiles and x.shape[3] >= 32:
        hit = index[:, :, None, :, None, :] == _tap_ids(cfg)
        return _untile(jnp.where(hit, g[:, :, None, :, None, :], zero), x.shape[1:3], cfg)
    area = math.prod(cfg.window)
    return _write_all([jnp.where(index == t, g, zero) for t in range(area)], x.shape[1:-1], cfg)


def _max_gather_impl(x, ct, cfg):
    index = _argmax_taps(x, cfg)
    zero = jnp.zeros((), ct.dtype)
    return sum(jnp.where(index == t, cts, zero) for t, cts in _taps(ct, cfg, 0))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _vjp_max_pool(x, cfg):
    return _max_pool_impl(x, cfg)


def _max_pool_fwd(x, cfg):
    return _vjp_max_pool(x, cfg), x


def _max_pool_bwd(cfg, x, g):
    """dx[p] = sum over windows whose first maximum is p of g; every other cell gets 0.
    Residuals: x (the argmax is recomputed in the backward, not stored)."""
    return (_max_scatter(x, g, cfg),)


_vjp_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _max_scatter(x, g, cfg):
    return _max_scatter_impl(x, g, cfg)


def _max_scatter_fwd(x, g, cfg):
    return _max_scatter(x, g, cfg), x


def _max_scatter_bwd(cfg, x, ct):
    """Linear in g with the argmax fixed: d/dg = ct read at each window's argmax. The argmax is
    piecewise constant in x, so d/dx = 0."""
    return jnp.zeros_like(x), _max_gather(x, ct, cfg)


_max_scatter.defvjp(_max_scatter_fwd, _max_scatter_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _max_gather(x, ct, cfg):
    return _max_gather_impl(x, ct, cfg)


def _max_gather_fwd(x, ct, cfg):
    return _max_gather(x, ct, cfg), x


def _max_gather_bwd(cfg, x, u):
    """Adjoint of the gather is the scatter: d/dct = max_scatter(x, u); d/dx = 0."""
    return jnp.zeros_like(x), _max_scatter(x, u, cfg)


_max_gather.defvjp(_max_gather_fwd, _max_gather_bwd)


def _pool_primitives():
    """The primitives' module, imported when the op is first traced under the primitive binding
    (importing it registers the rules with JAX)."""
    from fcnn.ops import _pool_primitives

    return _pool_primitives


# Both pools bound by the current binding (`_binding`): the primitives of `_pool_primitives`,
# or the custom_vjp functions above.
_avg_pool = _binding.bound(lambda *a: _pool_primitives().avg_pool(*a), _vjp_avg_pool)
_max_pool = _binding.bound(lambda *a: _pool_primitives().max_pool(*a), _vjp_max_pool)
