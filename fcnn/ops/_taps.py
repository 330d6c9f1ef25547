"""Window taps: reading tap (a, b) of every window as one strided slice, and its adjoint.

Tap (a, b) of a window with stride s and dilation d reads the padded input at rows
``i*s + a*d`` and columns ``j*s + b*d`` for every output ``(i, j)``. Reading is ``lax.slice``;
the adjoint writes an ``(N, H_out, W_out, C)`` array back to those cells of the unpadded input
with one ``lax.pad`` (interior ``s - 1``; negative edges drop the cells that fell in padding).
Pooling's backward and the im2col/col2im convolution are built from these; ``write_all`` is
the adjoint of reading every tap of a window.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def pad(x, pads, fill=0.0):
    """Pad the H and W axes of NHWC `x` by explicit `((top, bottom), (left, right))`."""
    (pt, pb), (pl, pr) = pads
    return lax.pad(x, jnp.array(fill, x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))


def read(xp, a, b, out_hw, stride, dilation=(1, 1)):
    """Tap (a, b) of every window of the padded `xp`: `(N, H_out, W_out, C)`."""
    n, _, _, c = xp.shape
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    start = (0, a * dh, b * dw, 0)
    limit = (n, a * dh + (ho - 1) * sh + 1, b * dw + (wo - 1) * sw + 1, c)
    return lax.slice(xp, start, limit, (1, sh, sw, 1))


def write(v, a, b, in_hw, pads, stride, dilation=(1, 1)):
    """Adjoint of `read` after padding: scatter `v: (N, H_out, W_out, C)` into zeros of the
    unpadded `(N, H, W, C)` at rows `i*s + a*d - p_top`, columns `j*s + b*d - p_left`."""
    ho, wo = v.shape[1:3]
    (h, w), (sh, sw), (dh, dw) = in_hw, stride, dilation
    top, left = a * dh - pads[0][0], b * dw - pads[1][0]
    rows = (top, h - top - ((ho - 1) * sh + 1), sh - 1)
    cols = (left, w - left - ((wo - 1) * sw + 1), sw - 1)
    return lax.pad(v, jnp.array(0, v.dtype), ((0, 0, 0), rows, cols, (0, 0, 0)))


def write_all(values, window, in_hw, pads, stride, dilation=(1, 1)):
    """Adjoint of reading every tap: `values[a * kw + b]` (each `(N, H_out, W_out, C)`) written
    back to the cells tap (a, b) reads and summed, as the unpadded `(N, H, W, C)`.

    At stride 1 each tap's block is a plain window of the padded input, so the blocks are added
    in place into one buffer (faster than summing a padded copy per tap, e.g. LeNet's conv dX;
    docs/performance.md); otherwise each is written with `write` and the copies are summed."""
    kh, kw = window
    if tuple(stride) != (1, 1):
        return sum(write(values[a * kw + b], a, b, in_hw, pads, stride, dilation)
                   for a in range(kh) for b in range(kw))
    n, ho, wo, c = values[0].shape
    (pt, pb), (pl, pr) = pads
    dh, dw = dilation
    acc = jnp.zeros((n, in_hw[0] + pt + pb, in_hw[1] + pl + pr, c), values[0].dtype)
    for a in range(kh):
        for b in range(kw):
            acc = acc.at[:, a * dh: a * dh + ho, b * dw: b * dw + wo].add(values[a * kw + b])
    return acc[:, pt: pt + in_hw[0], pl: pl + in_hw[1]]
