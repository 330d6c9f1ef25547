"""Pixel shuffle (depth to space) and its inverse, with hand-written rules.

`pixel_shuffle(x, r)` moves channels into space: with d spatial axes, x `(N, *S, C·r^d)`
becomes `(N, *(S·r), C)`, input channel `c·r^d + o` (o the row-major index of the offsets
(o_1, ..., o_d), each in [0, r)) landing at output cell `(s_1·r + o_1, ..., s_d·r + o_d)`,
channel c — PyTorch's `PixelShuffle` order (the output channel varies slowest), which the
sub-pixel convolutions of Shi et al. 2016 trained in PyTorch assume. `pixel_unshuffle` is its
inverse.

Both are permutations P and P^-1 = P^T: the JVP of each is itself, the transpose of the
shuffle is the unshuffle and the other way round, so every order of derivative runs these two
maps (reshapes and one transpose each). Values move unchanged: NaN and ±inf included.
"""

from __future__ import annotations

from fcnn import _args
from fcnn.ops import _binding, _checks


def pixel_shuffle(x, factor):
    """Depth to space: `(N, *spatial, C·r^d)` -> `(N, *(spatial·r), C)`, r = `factor`, d the
    number of spatial axes (1, 2, 3 or more), PyTorch's channel order (module docstring).

    Args:
      x: floating, `(N, *spatial, channels)` with channels divisible by r^d.
      factor: int >= 1.
    """
    r = _check("pixel_shuffle", x, factor)
    if x.shape[-1] % r ** (x.ndim - 2):
        raise ValueError(f"pixel_shuffle: the channels ({x.shape[-1]}) must be divisible by "
                         f"factor**{x.ndim - 2} = {r ** (x.ndim - 2)}, got x of shape "
                         f"{tuple(x.shape)}.")
    return _shuffle(x, r) if r > 1 else x


def pixel_unshuffle(x, factor):
    """Space to depth, the inverse of `pixel_shuffle`: `(N, *(spatial·r), C)` ->
    `(N, *spatial, C·r^d)`; every spatial size must be divisible by r = `factor`."""
    r = _check("pixel_unshuffle", x, factor)
    if any(n % r for n in x.shape[1:-1]):
        raise ValueError(f"pixel_unshuffle: every spatial size must be divisible by factor "
                         f"{r}, got x of shape {tuple(x.shape)}.")
    return _unshuffle(x, r) if r > 1 else x


def _check(op, x, factor):
    x = _checks.floating(op, "x", x)
    if x.ndim < 3:
        raise ValueError(f"{op}: `x` must be (N, *spatial, C) with at least one spatial axis, "
                         f"got shape {tuple(x.shape)}.")
    return _args.as_int(factor, op, "factor", minimum=1)


def _shuffle_impl(x, r):
    n, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1] // r ** (x.ndim - 2)
    d = len(spatial)
    a = x.reshape(n, *spatial, c, *(r,) * d)  # (N, S_1..S_d, C, o_1..o_d)
    # -> (N, S_1, o_1, ..., S_d, o_d, C)
    order = [0] + [p for k in range(d) for p in (1 + k, 2 + d + k)] + [1 + d]
    return a.transpose(order).reshape(n, *(s * r for s in spatial), c)


def _unshuffle_impl(y, r):
    n, spatial, c = y.shape[0], tuple(s // r for s in y.shape[1:-1]), y.shape[-1]
    d = len(spatial)
    a = y.reshape(n, *(v for s in spatial for v in (s, r)), c)  # (N, S_1, o_1, ..., C)
    # -> (N, S_1..S_d, C, o_1..o_d)
    order = [0] + [1 + 2 * k for k in range(d)] + [1 + 2 * d] + [2 + 2 * k for k in range(d)]
    return a.transpose(order).reshape(n, *spatial, c * r ** d)


# ----------------------------------------------------------------------------- custom_vjp binding

def _shuffle_primitives():
    """The primitives' module, imported when the op is first traced under the primitive binding
    (importing it registers the rules with JAX)."""
    from fcnn.ops import _shuffle_primitives

    return _shuffle_primitives


# each map's backward is the other (`_binding.linear_vjp_pair`)
_shuffle = _binding.bound(lambda *a: _shuffle_primitives().shuffle(*a),
                          _binding.linear_vjp_pair(_shuffle_impl, _unshuffle_impl))
_unshuffle = _binding.bound(lambda *a: _shuffle_primitives().unshuffle(*a),
                            _binding.linear_vjp_pair(_unshuffle_impl, _shuffle_impl))
