"""The Layer contract and its metadata.

A layer is ``Layer(init, apply)``, a NamedTuple of two pure functions:

    params, out_shape = init(key, input_shape)       # input_shape per example, e.g. (28, 28, 1)
    y = apply(params, x, *, key=None, train=False)   # x batched (N, *input_shape) or not

A *stateful* layer (`layer.stateful`: a BatchNorm, or a combinator with one inside) also has a
state, an explicit pytree that is not trained by gradients (running statistics). Its init is
the same; its state comes from `layer.init_state(input_shape)` and its apply takes the state
and returns the next one:

    state = layer.init_state(input_shape)
    y, state = apply(params, x, *, key=None, train=False, state=state)

The state changes only with `train=True`; with `train=False` the same state comes back.
`layer.apply_with_state(params, state, x, ...)` serves any layer (a stateless one's state is
`()` and comes back unchanged), for code written once for both kinds.

Every fcnn constructor attaches a `LayerInfo` to its init function; ``layer.info`` reads it. It
holds the layer's kind, its normalised configuration, its window geometry, its children, a
pure-Python shape function (the one source of truth that init, `fcnn.summary` and
`fcnn.shapes.receptive_field` use) and `rebind`, which rebuilds the layer on another ops module
(`with_ops`). A user's own ``Layer(init, apply)`` carries no info: ``layer.info`` then describes
it as kind ``"Layer"``, its shape taken from ``jax.eval_shape`` of its init.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from fcnn import _args
from fcnn import init as initializers
from fcnn import ops as default_ops


class LayerError(ValueError):
    """A ValueError raised at init (or `with_ops`), carrying where in the model it happened."""

    def __init__(self, layer: str, detail: str, path: tuple[str, ...] = ()):
        self.layer, self.detail, self.path = layer, detail, path
        where = (".".join(path) + " " if path else "") + layer
        super().__init__(f"{where}: {detail}")

    def under(self, segment: str) -> LayerError:
        """The same error, one level deeper in a combinator (`segment`, e.g. "serial[1]")."""
        return LayerError(self.layer, self.detail, (segment, *self.path))


class Window(NamedTuple):
    """Geometry of a conv or pool window, normalised at construction.

    One entry per spatial axis (two for an image, one for a signal, three for a volume).
    `padding` is explicit ``((low, high), ...)`` ints, or "SAME" / "VALID", which depend on the
    input size (`pads` resolves them). Along each axis the window spans
    ``F_eff = (F - 1) * d + 1`` input cells and the output has
    ``floor((W + p_lo + p_hi - F_eff) / S) + 1`` cells. A transposed convolution's window
    (`transposed`) runs the other way: ``(W - 1) * S - p_lo - p_hi + F_eff + output_padding``
    output cells, each reading about ``ceil(F_eff / S)`` input cells.
    """

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...] | str
    dilation: tuple[int, ...] = (1, 1)
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    @property
    def effective(self) -> tuple[int, ...]:
        """The span `F_eff` per axis of the (dilated) window, in input cells."""
        return tuple(_args.effective_window(k, d) for k, d in zip(self.kernel, self.dilation))

    def pads(self, spatial: tuple[int, ...], op: str = "Window") -> tuple:
        """Explicit padding on an input of `spatial` sizes."""
        return _args.as_padding(self.padding, op, spatial, self.effective, self.stride)


class LayerInfo(NamedTuple):
    """What a layer is, for summaries, shapes, repr and `with_ops`."""

    kind: str  # "Conv2D", "serial", ...; "Layer" for a user's bare Layer(init, apply)
    config: dict[str, Any]  # normalised constructor arguments (shown by repr)
    window: Window | None  # conv / pool geometry; None for other layers
    children: tuple[Layer, ...]  # combinators' child Layers
    shape: Callable[[tuple[int, ...]], Any]  # input shape -> output shape (raises LayerError)
    rebind: Callable[[Any], Layer] | None = None  # ops module -> the same layer on it
    apply: Callable | None = None  # the apply this info describes (with the init holding it)
    init_state: Callable | None = None  # input shape -> initial state; None: stateless
    # the apply of this layer followed by a layer of the kind named, as one op (a Conv2D's
    # {"ReLU": conv2d(..., activation="relu")}): `serial` runs such pairs fused
    fused: dict[str, Callable] | None = None


class Layer(NamedTuple):
    """A layer: `init(key, input_shape) -> (params, out_shape)` and
    `apply(params, x, *, key=None, train=False) -> y` — or, for a stateful layer,
    `apply(params, x, *, key=None, train=False, state) -> (y, state)`. Unpacks like stax:
    `init, apply = layer`."""

    init: Callable
    apply: Callable

    @property
    def stateful(self) -> bool:
        """Whether the layer carries state (its apply takes `state=` and returns `(y, state)`)."""
        return self.info.init_state is not None

    def init_state(self, input_shape):
        """The initial state on inputs of `input_shape` (per example); `()` when stateless."""
        init_state = self.info.init_state
        return () if init_state is None else init_state(input_shape)

    def apply_with_state(self, params, state, x, *, key=None, train=False):
        """`(y, state)` for any layer: a stateful one's apply, or a stateless one's with `state`
        returned as it came."""
        if self.stateful:
            return self.apply(params, x, key=key, train=train, state=state)
        return self.apply(params, x, key=key, train=train), state

    @property
    def info(self) -> LayerInfo:
        info = getattr(self.init, "info", None)
        if isinstance(info, LayerInfo) and info.apply is self.apply:
            return info
        return _bare_info(self.init)  # a user's pair (an fcnn init with another apply included)

    def __repr__(self) -> str:
        info = self.info
        if info.kind == "Layer":
            return f"Layer({_qualname(self.init)}, {_qualname(self.apply)})"
        parts = [repr(c) for c in info.children]
        parts += [f"{k}={v!r}" for k, v in info.config.items()]
        return f"{info.kind}({', '.join(parts)})"


def _qualname(fn) -> str:
    return getattr(fn, "__qualname__", type(fn).__name__)


def _bare_info(init) -> LayerInfo:
    """The info of a user's Layer: its output shape from tracing its init (nothing allocated)."""

    def shape(input_shape):
        out = []
        jax.eval_shape(lambda key: out.append(init(key, input_shape)) or (), jax.random.key(0))
        return out[0][1]

    return LayerInfo("Layer", {}, None, (), shape)


def stateful(init: Callable, apply: Callable, init_state: Callable) -> Layer:
    """A user's own stateful layer: `init(key, input_shape) -> (params, out_shape)`,
    `init_state(input_shape) -> state` (a pytree of arrays) and `apply(params, x, *, key=None,
    train=False, state) -> (y, state)`, which must return the state unchanged unless
    `train=True`. It composes in the combinators like a bare `Layer(init, apply)` (kind
    "Layer"), and its state goes wherever fcnn's own goes (train step, fit, checkpoints)."""
    for name, fn in (("init", init), ("apply", apply), ("init_state", init_state)):
        if not callable(fn):
            raise TypeError(f"stateful: `{name}` must be callable, got {type(fn).__name__}.")

    def layer_init(key, input_shape):
        return init(key, input_shape)

    layer_init.info = _bare_info(init)._replace(apply=apply, init_state=init_state)
    layer_init.__qualname__ = _qualname(init)
    return Layer(layer_init, apply)


def as_layer(value, op: str, name: str) -> Layer:
    """`value` as a Layer: a Layer, or an `(init, apply)` pair of callables (stax style)."""
    if isinstance(value, Layer):
        return value
    if isinstance(value, tuple) and len(value) == 2 and all(map(callable, value)):
        return Layer(*value)
    raise TypeError(f"{op}: `{name}` must be a Layer (init, apply), got "
                    f"{type(value).__name__} {value!r}.")


def with_ops(layer: Layer, module) -> Layer:
    """`layer` rebuilt so that every fcnn leaf calls `module`'s functions (e.g.
    `fcnn.reference`, the plain-lax oracle) instead of `fcnn.ops`'s.

    Same init (so the same params for the same key) and new apply functions; `layer` itself is
    unchanged. A user's bare `Layer(init, apply)` is kept as is.

    Raises:
      LayerError (a ValueError): `module` lacks a function some leaf needs, or it cannot take an
        argument the leaf's configuration passes (Conv2D's non-"auto" `algorithm`); the message
        names the layer, its position and the function.
      TypeError: `layer` is not a Layer.
    """
    layer = as_layer(layer, "with_ops", "layer")
    rebind = layer.info.rebind
    return layer if rebind is None else rebind(module)


def op(module, name: str, layer: str, keywords: dict[str, Any] | None = None) -> Callable:
    """`module.<name>` for a leaf of kind `layer`, checked to exist and to take the keyword
    arguments `keywords` (name -> value) the leaf will pass it."""
    fn = getattr(module, name, None)
    where = getattr(module, "__name__", type(module).__name__)
    if not callable(fn):
        raise LayerError(layer, f"the ops module {where!r} has no function `{name}`.")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: leave it to the call
        return fn
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        for kw, value in (keywords or {}).items():
            if kw not in {p.name for p in params}:
                raise LayerError(layer, f"`{kw}`={value!r} is passed to `{name}`, but "
                                        f"{where}.{name} takes no `{kw}` argument.")
    return fn


# The key of `LayerInfo.fused` under which a layer offers to run `relu(layer(x) + residual)` as
# one op, `residual` a keyword of that apply: `residual(block)` followed by a ReLU runs so when
# its block's last layer offers it (a BatchNorm: the end of a ResNet's basic block).
RESIDUAL_RELU = "residual+ReLU"


def make(kind: str, config: dict, shape: Callable, init: Callable, apply: Callable, *,
         window: Window | None = None, children: tuple = (),
         rebind: Callable | None = None, init_state: Callable | None = None,
         fused: dict | None = None, own_init: bool = True) -> Layer:
    """The Layer of `init` and `apply`, its info attached to a fresh init function (so layers
    that share an init still each carry their own info). `init_state` makes it stateful;
    `fused` maps a following layer's kind to the apply running both as one op; `own_init`
    False marks an init that calls a user's initialiser (it runs op by op)."""

    def layer_init(key, input_shape):
        if getattr(_INIT, "inside", False) or not COMPILED_INIT or not _compilable(layer_init) \
                or not _threefry(key):
            return init(key, input_shape)
        return _compiled_init(layer_init, init, key, input_shape)

    layer_init.info = LayerInfo(kind, config, window, tuple(children), shape, rebind, apply,
                                init_state, fused)
    layer_init.__qualname__ = f"{kind}.init"
    layer_init.own_init = own_init
    apply.__qualname__ = f"{kind}.apply"
    return Layer(layer_init, apply)


# Whether a layer's init runs as one compiled program: on unless FCNN_COMPILED_INIT=0. Off,
# every parameter's draw is its own op, dispatched one by one: XLA then compiles the random-bits
# program once per parameter shape, which dominated a first init (LeNet-5 2.6 s, VGG-16 5.5 s;
# docs/performance.md). The parameters are the same bits either way.
COMPILED_INIT = os.environ.get("FCNN_COMPILED_INIT", "1") != "0"

_INIT = threading.local()  # .inside: this thread is tracing an init for its compiled program


# A tree with fewer weighted layers (convolutions, dense) than this inits op by op: its few
# draws hit the per-shape programs XLA keeps for the whole process, where a compiled init is
# compiled per layer object (in the suite, which inits thousands of small layers, the compiled
# init of every layer cost 18 s of 10 minutes). LeNet-5 has 5.
COMPILED_INIT_MIN_WEIGHTED = 3
_WEIGHTED = ("Conv1D", "Conv2D", "Conv3D", "ConvTranspose1D", "ConvTranspose2D",
             "ConvTranspose3D", "Dense")


def _compilable(layer_init) -> bool:
    """Whether every layer in the tree is fcnn's own with fcnn's own initialisers, and the
    tree has at least `COMPILED_INIT_MIN_WEIGHTED` weighted layers. A user's bare
    `Layer(init, apply)` may do anything in its init (draw with numpy, read concrete values),
    and a user's initialiser may scale its draw where XLA would fold the scale (other bits than
    op by op): a tree holding either runs op by op, as written."""
    weighted = _weighted(layer_init)
    return weighted is not None and weighted >= COMPILED_INIT_MIN_WEIGHTED


def _weighted(layer_init) -> int | None:
    """The number of weighted layers in the tree; None if it holds a user's layer or
    initialiser."""
    info = getattr(layer_init, "info", None)
    if not isinstance(info, LayerInfo) or info.kind == "Layer" \
            or not getattr(layer_init, "own_init", False):
        return None
    total = int(info.kind in _WEIGHTED)
    for child in info.children:
        n = _weighted(child.init)
        if n is None:
            return None
        total += n
    return total


def _threefry(key) -> bool:
    """Whether `key` is a threefry key (typed, or a raw uint32 key under JAX's default
    implementation): the batched splits and draws equal the one-by-one ones for threefry's
    counter-based bits; another implementation (rbg) runs op by op."""
    try:
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            return "threefry" in str(jax.random.key_impl(key))
        return "threefry" in str(jax.config.jax_default_prng_impl)
    except (AttributeError, TypeError, ValueError):
        return False


def _static_shape(shape):
    """An input shape as nested tuples of ints (hashable: the compiled program's static key)."""
    if isinstance(shape, (tuple, list)):
        return tuple(_static_shape(s) for s in shape)
    return int(shape)


def _compiled_init(layer_init, init, key, input_shape):
    """`init(key, input_shape)` as one jitted program, compiled once per layer object and input
    shape and cached on the layer: the same random draws as the eager init (the same threefry
    calls on the same keys; tests/test_init.py checks every model bit for bit), one compile
    instead of one per parameter shape. The output shape comes from the layer's shape function,
    the one source of truth init itself uses; under `vmap` the program is batched over keys."""
    try:
        static = _static_shape(input_shape)
    except (TypeError, ValueError):  # not a shape: the eager init says what is wrong with it
        return init(key, input_shape)
    programs = getattr(layer_init, "_compiled", None)
    if programs is None:
        @initializers.together
        def params_of(key, shape):
            _INIT.inside = True
            try:
                return init(key, shape)[0]
            finally:
                _INIT.inside = False

        # LLVM's O1 instead of XLA's default O3: half the compile (ResNet-50: 3.2 s against
        # 6.3 s), and the same bits as the op-by-op init at the default (O0 would differ: it
        # forms no fused multiply-adds in the normal's erf_inv). A level set in XLA_FLAGS is
        # the user's choice, and every op runs at it: the init too. Inside another jit (or
        # eval_shape) options are not allowed: the second program, compiled with the caller's.
        level = {} if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "") \
            else {"compiler_options": {"xla_backend_optimization_level": 1}}
        programs = layer_init._compiled = (jax.jit(params_of, static_argnums=1, **level),
                                           jax.jit(params_of, static_argnums=1))
    out_shape = layer_init.info.shape(input_shape)
    try:
        return programs[0](key, static), out_shape
    except ValueError as e:
        if "compiler_options" not in str(e):
            raise
    return programs[1](key, static), out_shape


def leaf(kind: str, config: dict, shape: Callable, init: Callable,
         bind: Callable[[Any], Callable], *, window: Window | None = None,
         init_state: Callable | None = None, module=default_ops,
         own_init: bool = True) -> Layer:
    """A leaf layer whose `apply = bind(module)`; `bind` looks up the ops it calls with `op`
    (so a missing function is an error here, not at apply). `with_ops` calls `bind` again.
    `bind` may return `(apply, fused)` instead (see `make`)."""
    bound = bind(module)
    apply, fused = bound if isinstance(bound, tuple) else (bound, None)
    return make(kind, config, shape, init, apply, window=window, init_state=init_state,
                fused=fused, own_init=own_init,
                rebind=lambda m: leaf(kind, config, shape, init, bind, window=window,
                                      init_state=init_state, module=m, own_init=own_init))


def check_state(op: str, model: Layer, state) -> None:
    """A `state` argument that fits the model's kind: given (not None) for a stateful model,
    absent (None) for a stateless one; else a ValueError naming `op`."""
    if model.stateful and state is None:
        raise ValueError(f"{op}: the model carries state (e.g. batch norm's running "
                         "statistics): pass `state` (from model.init_state(input_shape)).")
    if not model.stateful and state is not None:
        raise ValueError(f"{op}: the model is stateless; it takes no `state` (got "
                         f"{type(state).__name__}).")


def find(layer: Layer, kind: str, path: tuple[str, ...] = ()) -> list[str]:
    """The positions (e.g. "serial[0].serial[1]") of every layer of `kind` inside `layer`."""
    info = layer.info
    if info.kind == kind:
        return [".".join(path)]
    if info.kind == "residual":
        segments = ["residual.block", "residual.shortcut"]
    else:
        segments = [f"{info.kind}[{i}]" for i in range(len(info.children))]
    return [p for child, s in zip(info.children, segments) for p in find(child, kind, (*path, s))]


def missing_state(layer: str) -> ValueError:
    """The error of a stateful layer's apply called without its state."""
    return ValueError(f"{layer}: carries state (e.g. batch norm's running statistics): call "
                      "apply(params, x, ..., state=state), with state from "
                      "layer.init_state(input_shape); it returns (y, state).")


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


def image_shape(layer: str, input_shape, rank: int = 2) -> tuple[int, ...]:
    """`input_shape` checked to be one example of `rank` spatial axes and the channels
    (`(H, W, C)` for an image)."""
    shape = as_shape(layer, input_shape)
    if len(shape) != rank + 1:
        from fcnn.ops._checks import layout

        raise LayerError(layer, f"expects {layout(rank)} input, got {shape}.")
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
