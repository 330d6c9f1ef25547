"""Argument normalisation and shape arithmetic: pure Python on ints, testable without JAX.

Every public op and layer normalises its configuration here, at the boundary, so the custom
rules only ever see one form: Python ints and floats, pairs of ints for stride, dilation and
window, and explicit ``((top, bottom), (left, right))`` pairs for padding. Each kind of value
is checked by one function (`as_int`, `as_float`, `as_pair`, `as_shape`, `as_padding`), and
errors name the op and the argument.

Configuration is static: Python numbers, numpy scalars and arrays (``np.int64(2)``,
``np.array([1, 2])``) and concrete jax arrays are accepted as the equal Python values; a value
traced under ``jit`` has none at trace time and is a TypeError (see `static`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

Pair = tuple[int, int]
Padding = tuple[Pair, Pair]


def static(value, op: str, name: str, kind: str = "a Python value"):
    """``value`` with numpy / jax arrays and scalars as Python numbers and (nested) tuples.

    Lists and tuples are converted element by element; anything else comes back unchanged. A
    traced jax value cannot be converted (jax raises a TypeError subclass): a TypeError saying
    ``name`` must be ``kind``.
    """
    if isinstance(value, (list, tuple)):
        return tuple(static(v, op, name, kind) for v in value)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy or jax array / scalar
        try:
            value = value.tolist()
        except TypeError:
            raise TypeError(
                f"{op}: `{name}` must be {kind} known at trace time, got a traced array "
                f"({type(value).__name__}). It is static configuration: pass a Python or numpy "
                f"value, or mark the argument static in jax.jit."
            ) from None
        return static(value, op, name, kind) if isinstance(value, list) else value
    return value


def _bounds(minimum=None, above=None, below=None) -> str:
    """`` in [0, 1)``, `` >= 1``, `` > 0``... for messages; empty without bounds."""
    low = f"{minimum:g}" if minimum is not None else None if above is None else f"{above:g}"
    if low is not None and below is not None:
        return f" in {'[' if minimum is not None else '('}{low}, {below:g})"
    if low is not None:
        return f" {'>=' if minimum is not None else '>'} {low}"
    return "" if below is None else f" < {below:g}"


def as_int(value, op: str, name: str, *, minimum: int | None = None) -> int:
    """A plain int (numpy integers and 0-d integer arrays included; bools refused),
    ``>= minimum`` when given."""
    value = static(value, op, name, "an int")
    need = _bounds(minimum)
    if isinstance(value, bool):
        raise TypeError(f"{op}: `{name}` must be an int{need}, got bool {value!r}.")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{op}: `{name}` must be an int{need}, got {type(value).__name__} {value!r}."
        ) from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: `{name}` must be an int{need}, got {v}.")
    return v


def as_float(value, op: str, name: str, *, minimum: float | None = None,
             above: float | None = None, below: float | None = None, note: str = "") -> float:
    """A finite Python float from an int or float (numpy scalars and 0-d arrays included; bools
    refused), within ``[minimum`` / ``(above`` and ``below)`` when given.

    ``note`` is said after the name, e.g. ``rate`` (the drop probability).
    """
    value = static(value, op, name, "a float")
    what = f"{op}: `{name}`" + (f" ({note})" if note else "")
    need = _bounds(minimum, above, below)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a float{need}, got {type(value).__name__} {value!r}.")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float's range
        v = math.inf
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite float{need}, got {value!r}.")
    if ((minimum is not None and v < minimum) or (above is not None and v <= above)
            or (below is not None and v >= below)):
        raise ValueError(f"{what} must be a float{need}, got {value!r}.")
    return v


def as_shape(value, op: str, name: str, rank: int | None = None, *,
             minimum: Sequence[int] | int = 1) -> tuple[int, ...]:
    """A tuple of ``rank`` (any number if None) plain ints (a jax / numpy shape, a list or a 1-D
    integer array), each ``>= minimum`` (one bound, or one per axis)."""
    kind = "a tuple of " + ("" if rank is None else f"{rank} ") + "ints"
    value = static(value, op, name, kind)
    if not isinstance(value, tuple) or (rank is not None and len(value) != rank):
        raise ValueError(f"{op}: `{name}` must be {kind}, got {value!r}.")
    lows = (minimum,) * len(value) if isinstance(minimum, int) else tuple(minimum)
    return tuple(as_int(v, op, f"{name}[{i}]", minimum=low)
                 for i, (v, low) in enumerate(zip(value, lows)))


def as_pair(value, op: str, name: str, *, minimum: int = 1) -> Pair:
    """An int or a length-2 sequence of ints (a numpy array of shape (2,) included), each
    >= ``minimum``, as a pair."""
    return as_tuple(value, op, name, 2, minimum=minimum)  # type: ignore[return-value]


def _per_axis(rank: int) -> str:
    """How a value per spatial axis is named in messages: a pair (h, w), a triple (d, h, w)..."""
    return {1: "a 1-tuple (w,)", 2: "a pair (h, w)", 3: "a triple (d, h, w)"}.get(
        rank, f"a tuple of {rank} ints")


def as_tuple(value, op: str, name: str, rank: int, *, minimum: int = 1) -> tuple[int, ...]:
    """An int (the same on every axis) or a sequence of ``rank`` ints (a numpy array of shape
    (rank,) included), each >= ``minimum``, as a ``rank``-tuple: one value per spatial axis."""
    kind = f"an int or {_per_axis(rank)}"
    value = static(value, op, name, kind)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != rank:
            raise ValueError(f"{op}: `{name}` must be {kind}, got {tuple(value)!r}.")
        out = tuple(as_int(v, op, name) for v in value)
    else:
        out = (as_int(value, op, name),) * rank
    if min(out) < minimum:
        raise ValueError(f"{op}: `{name}` must be >= {minimum} in each dimension, got {value!r}.")
    return out


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


def _padding_forms(rank: int = 2) -> str:
    if rank == 2:
        return "an int, a pair (ph, pw), ((top, bottom), (left, right)), 'SAME' or 'VALID'"
    return (f"an int, {_per_axis(rank)}, {rank} (low, high) pairs, one per spatial axis, "
            f"'SAME' or 'VALID'")


def padding_form(padding, op: str, rank: int = 2):
    """Check ``padding`` for ``rank`` spatial axes and normalise what does not depend on the
    input size.

    Returns explicit ``((low, high), ...)`` ints per axis (``((top, bottom), (left, right))`` in
    2-D), or ``"SAME"`` / ``"VALID"`` (upper case), whose pads depend on the input size:
    `as_padding` resolves them once it is known. Accepts the forms listed in `as_padding`;
    raises its errors.
    """
    forms = _padding_forms(rank)
    padding = static(padding, op, "padding", forms)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode in ("SAME", "VALID"):
            return mode
        raise ValueError(
            f"{op}: `padding` string must be 'SAME' or 'VALID', got {padding!r}."
        )
    if isinstance(padding, tuple):  # `static` made lists and arrays tuples
        nested = [isinstance(p, tuple) for p in padding]
        if len(padding) != rank or any(nested) != all(nested):
            raise ValueError(f"{op}: `padding` must be {forms}, got {padding!r}.")
        if all(nested):
            pads = tuple(as_pair(p, op, "padding", minimum=-(2**62)) for p in padding)
        else:
            pads = tuple((p, p) for p in as_tuple(padding, op, "padding", rank,
                                                   minimum=-(2**62)))
    elif isinstance(padding, int) and not isinstance(padding, bool):
        pads = ((padding, padding),) * rank
    else:
        raise TypeError(
            f"{op}: `padding` must be {forms}, got {type(padding).__name__} {padding!r}."
        )
    if min(min(p) for p in pads) < 0:
        raise ValueError(f"{op}: `padding` must be non-negative, got {padding!r}.")
    return pads


def as_padding(padding, op: str, spatial, windows, strides):
    """Normalise ``padding`` to explicit ``((low, high), ...)``, one pair per spatial axis
    (``((top, bottom), (left, right))`` in 2-D); the rank is ``len(spatial)``.

    Args:
      padding: an int, one int per axis (``(ph, pw)`` in 2-D), explicit ``(low, high)`` pairs
        per axis (numpy arrays of shape (rank,) or (rank, 2) as those forms), or the strings
        ``"SAME"`` / ``"VALID"`` (any case).
      op: op name for error messages.
      spatial: the input's spatial sizes (``(H, W)`` in 2-D).
      windows: effective window per axis (dilation included).
      strides: stride per axis.

    Raises:
      ValueError: unknown string, negative padding, or a malformed sequence.
      TypeError: padding of a type that is none of the above.
    """
    form = padding_form(padding, op, len(spatial))
    if form == "VALID":
        return ((0, 0),) * len(spatial)
    if form == "SAME":
        return tuple(same_padding(n, f, s) for n, f, s in zip(spatial, windows, strides))
    return form


PRECISIONS = ("default", "high", "highest")


def as_precision(value, op: str) -> str | None:
    """`precision`: None (XLA's default for the platform) or one of PRECISIONS (a
    `jax.lax.Precision` too), as a lower-case string: static, hashable configuration."""
    if value is None:
        return None
    name = getattr(value, "name", value)  # a lax.Precision member
    if isinstance(name, str) and name.lower() in PRECISIONS:
        return name.lower()
    raise ValueError(f"{op}: `precision` must be None or one of {', '.join(map(repr, PRECISIONS))}"
                     f" (or a jax.lax.Precision), got {value!r}.")


def as_choice(value, op: str, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``choices``; else a ValueError (a TypeError for a
    non-string) listing them."""
    need = f"{op}: `{name}` must be one of {', '.join(map(repr, choices))}"
    if not isinstance(value, str):
        raise TypeError(f"{need}, got {type(value).__name__} {value!r}.")
    if value not in choices:
        raise ValueError(f"{need}, got {value!r}.")
    return value


def check_fits(op: str, spatial: Pair, windows: Pair, pads: Padding, what: str = "window", *,
               dilated: bool = True) -> None:
    """Raise if the (effective) window is larger than the padded input in some dimension;
    ``dilated=False`` for windows that have no dilation (pools), so the message does not say so."""
    names = "DHW"[-len(spatial):] if len(spatial) <= 3 else [f"axis {i + 1}" for i in
                                                            range(len(spatial))]
    for axis, n, f, (lo, hi) in zip(names, spatial, windows, pads):
        if n + lo + hi < f:
            span = f"{f} with dilation" if dilated else f"{f}"
            raise ValueError(
                f"{op}: the {what} ({span}) is larger than the padded input along "
                f"{axis} ({n} + padding {lo} + {hi} = {n + lo + hi}). "
                f"Use a smaller {what} or more padding."
            )
