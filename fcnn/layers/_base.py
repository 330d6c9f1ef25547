"""The Layer contract and its bookkeeping.

A layer is ``Layer(init, apply)``, a NamedTuple of two pure functions:

    params, out_shape = init(key, input_shape)       # input_shape per example, e.g. (28, 28, 1)
    y = apply(params, x, *, key=None, train=False)   # x batched (N, *input_shape) or not

Every constructor also attaches a `LayerInfo` to its init function (``layer.info``): the layer's
type name, its configuration, its children, and a pure-Python shape function — the one source of
truth that init, `fcnn.summary` and `fcnn.shapes.receptive_field` all use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from fcnn import _args


class LayerError(ValueError):
    """A ValueError raised at init, carrying where in the model it happened."""

    def __init__(self, layer: str, detail: str, path: tuple[str, ...] = ()):
        self.layer, self.detail, self.path = layer, detail, path
        where = (".".join(path) + " " if path else "") + layer
        super().__init__(f"{where}: {detail}")

    def under(self, segment: str) -> LayerError:
        """The same error, one level deeper in a combinator (`segment`, e.g. "serial[1]")."""
        return LayerError(self.layer, self.detail, (segment, *self.path))


class LayerInfo(NamedTuple):
    name: str  # type name: "Conv2D", "serial", ...
    config: dict[str, Any]
    children: tuple[Any, ...]  # child Layers (combinators)
    shape: Callable[[tuple[int, ...]], Any]  # input shape -> output shape (raises LayerError)


class Layer(NamedTuple):
    """A layer: `init(key, input_shape) -> (params, out_shape)` and
    `apply(params, x, *, key=None, train=False) -> y`. Unpacks like stax: `init, apply = layer`."""

    init: Callable
    apply: Callable

    @property
    def info(self) -> LayerInfo:
        return self.init.info

    def __repr__(self) -> str:
        parts = [repr(c) for c in self.info.children]
        parts += [f"{k}={v!r}" for k, v in self.info.config.items()]
        return f"{self.info.name}({', '.join(parts)})"


def make(name: str, config: dict, shape: Callable, init: Callable, apply: Callable,
         children: tuple = ()) -> Layer:
    """Attach the info to `init` and return the Layer."""
    init.info = LayerInfo(name, config, children, shape)
    init.__qualname__ = f"{name}.init"
    apply.__qualname__ = f"{name}.apply"
    return Layer(init, apply)


def config_error(layer: str, fn, *args, catch=ValueError, **kwargs):
    """Run an `_args` normaliser with `layer` as the op name; the errors in `catch` become a
    LayerError (so combinators can add the position)."""
    try:
        return fn(*args, **kwargs)
    except catch as e:
        raise LayerError(layer, str(e).split(": ", 1)[-1]) from None


def as_shape(layer: str, input_shape) -> tuple[int, ...]:
    """`input_shape` as a tuple of positive ints (`_args.as_shape`), or a LayerError."""
    return config_error(layer, _args.as_shape, input_shape, layer, "input_shape",
                        catch=(TypeError, ValueError))


def image_shape(layer: str, input_shape) -> tuple[int, int, int]:
    shape = as_shape(layer, input_shape)
    if len(shape) != 3:
        raise LayerError(layer, f"expects (H, W, C) input, got {shape}.")
    return shape


def batched(x, input_rank: int, layer: str):
    """`(x with a batch axis, whether it had one)` for an input whose example rank is known."""
    if x.ndim == input_rank + 1:
        return x, True
    if x.ndim == input_rank:
        return x[None], False
    raise ValueError(
        f"{layer}: expects inputs of rank {input_rank} (one example) or {input_rank + 1} "
        f"(a batch), got shape {tuple(x.shape)}."
    )
