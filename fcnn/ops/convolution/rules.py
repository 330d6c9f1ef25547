"""The convolution maps' derivative rules, written once for both bindings and every rank.

The three maps are bilinear (conv.py's docstring has their definitions), so each map's JVP is
the product rule and its transposes are the other two maps:

    map            transpose (cotangent ct) for its first / second operand
    conv(x, w)     x: conv_dx(ct, w)     w: conv_dk(x, ct)
    conv_dx(g, w)  g: conv(ct, w)        w: conv_dk(ct, g)
    conv_dk(x, g)  x: conv_dx(g, ct)     g: conv(x, ct)

`cotangents` states this table as code. The primitives' transpose rules
(`convolution.primitives`) and the custom_vjp backward rules (`convolution.custom_vjp`) both
call it, each with its own three maps (the primitives', or the custom_vjp functions), so the
relations are stated here alone. Nothing here depends on the number of spatial axes: sizes are
tuples of any length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

FORWARD, DX, DK = 0, 1, 2


class Maps(NamedTuple):
    """One binding's three maps, configuration bound: `conv(x, w)`, `conv_dx(g, w, in_sizes)`
    and `conv_dk(x, g, k_sizes)`."""

    conv: Callable
    conv_dx: Callable
    conv_dk: Callable


def cotangents(which, maps: Maps, ct, a, b, a_sizes, b_sizes, wants=(True, True)):
    """The cotangents of the operands (a, b) of map `which` (FORWARD, DX, DK), given its
    output's cotangent `ct`: a pair, None where `wants` says no. `a_sizes` is the spatial size
    of `a` (the forward input's, for the maps that produce it) and `b_sizes` that of the
    kernel, where the map needs them."""
    want_a, want_b = wants
    if which == FORWARD:  # <conv(x, w), ct> = <x, conv_dx(ct, w)> = <w, conv_dk(x, ct)>
        return (maps.conv_dx(ct, b, a_sizes) if want_a else None,
                maps.conv_dk(a, ct, b_sizes) if want_b else None)
    if which == DX:  # <conv_dx(g, w), ct> = <g, conv(ct, w)> = <w, conv_dk(ct, g)>
        return (maps.conv(ct, b) if want_a else None,
                maps.conv_dk(ct, a, b_sizes) if want_b else None)
    # <conv_dk(x, g), ct> = <x, conv_dx(g, ct)> = <g, conv(x, ct)>
    return (maps.conv_dx(b, ct, a_sizes) if want_a else None,
            maps.conv(a, ct) if want_b else None)


def spatial(shape, kernel=False):
    """The spatial sizes in an activation's shape `(N, *spatial, C)` or a kernel's
    `(*spatial, I, O)`."""
    return tuple(shape[:-2]) if kernel else tuple(shape[1:-1])
