"""Argument normalisation and shape arithmetic: pure Python on ints, testable without JAX.

Every public op normalises its configuration here, at the boundary, so the custom rules only
ever see one form: pairs of ints for stride, dilation and window, and explicit
``((top, bottom), (left, right))`` pairs for padding. Errors name the op and the argument.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

Pair = tuple[int, int]
Padding = tuple[Pair, Pair]


def _as_int(value, op: str, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{op}: `{name}` must be an int, got bool {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{op}: `{name}` must be an int, got {type(value).__name__} {value!r}."
        ) from None


def as_pair(value, op: str, name: str, *, minimum: int = 1) -> Pair:
    """An int or a length-2 sequence of ints, each >= ``minimum``, as a pair."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(
                f"{op}: `{name}` must be an int or a pair (h, w), got {tuple(value)!r}."
            )
        pair = (_as_int(value[0], op, name), _as_int(value[1], op, name))
    else:
        v = _as_int(value, op, name)
        pair = (v, v)
    if min(pair) < minimum:
        raise ValueError(f"{op}: `{name}` must be >= {minimum} in each dimension, got {value!r}.")
    return pair


def effective_window(size: int, dilation: int) -> int:
    """Span of a window of ``size`` taps spaced ``dilation`` apart: ``(F - 1) * d + 1``."""
    return (size - 1) * dilation + 1


def same_padding(size: int, window: int, stride: int) -> Pair:
    """``"SAME"`` padding of one dimension: output ``ceil(size / stride)``, odd cell at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return (total // 2, total - total // 2)


def output_size(size: int, window: int, stride: int, pad: Pair) -> int:
    """``floor((W + p_lo + p_hi - F_eff) / S) + 1`` for an effective window ``F_eff``."""
    return (size + pad[0] + pad[1] - window) // stride + 1


def remainder(size: int, window: int, stride: int, pad: Pair) -> int:
    """Cells of the padded input the forward floor drops at the high end (``r`` in the rules)."""
    return (size + pad[0] + pad[1] - window) % stride


def as_padding(padding, op: str, spatial: Pair, windows: Pair, strides: Pair) -> Padding:
    """Normalise ``padding`` to explicit ``((top, bottom), (left, right))``.

    Args:
      padding: an int, a pair ``(ph, pw)``, explicit ``((top, bottom), (left, right))``, or
        the strings ``"SAME"`` / ``"VALID"`` (any case).
      op: op name for error messages.
      spatial: input ``(H, W)``.
      windows: effective window ``(F_eff_h, F_eff_w)`` (dilation included).
      strides: ``(S_h, S_w)``.

    Raises:
      ValueError: unknown string, negative padding, or a malformed sequence.
      TypeError: padding of a type that is none of the above.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            return tuple(  # type: ignore[return-value]
                same_padding(n, f, s) for n, f, s in zip(spatial, windows, strides)
            )
        raise ValueError(
            f"{op}: `padding` string must be 'SAME' or 'VALID', got {padding!r}."
        )
    if isinstance(padding, Sequence):
        if len(padding) != 2:
            raise ValueError(
                f"{op}: `padding` must be an int, a pair (ph, pw), "
                f"((top, bottom), (left, right)), 'SAME' or 'VALID', got {padding!r}."
            )
        if all(isinstance(p, Sequence) and not isinstance(p, str) for p in padding):
            pads = tuple(as_pair(p, op, "padding", minimum=-(2**62)) for p in padding)
            if any(len(p) != 2 for p in padding):
                raise ValueError(f"{op}: explicit `padding` needs two pairs, got {padding!r}.")
        else:
            ph, pw = as_pair(padding, op, "padding", minimum=-(2**62))
            pads = ((ph, ph), (pw, pw))
    else:
        p = _as_int(padding, op, "padding")
        pads = ((p, p), (p, p))
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"{op}: `padding` must be non-negative, got {padding!r}.")
    return pads  # type: ignore[return-value]


def check_fits(op: str, spatial: Pair, windows: Pair, pads: Padding, what: str = "window") -> None:
    """Raise if the (effective) window is larger than the padded input in some dimension."""
    for axis, n, f, (lo, hi) in zip("HW", spatial, windows, pads):
        if n + lo + hi < f:
            raise ValueError(
                f"{op}: the {what} ({f} with dilation) is larger than the padded input along "
                f"{axis} ({n} + padding {lo} + {hi} = {n + lo + hi}). "
                f"Use a smaller {what} or more padding."
            )
