"""`fcnn.summary`: a model's table from shapes alone, in the style of the VGGNet memory and
parameter table of the CS231n notes (cs231n.github.io/convolutional-networks, "Case studies").

Nothing is allocated: output shapes come from each layer's shape function and parameter counts
from `jax.eval_shape` of its init, so VGG-16 (138M parameters) summarises in well under a second.
Conventions (the CS231n table's): activations count the input plus the outputs of conv, dense and
pool layers (elementwise layers are fused into the layer before them and count 0); FLOPs are per
example, forward, a multiply-add counted as 2. A user's bare `Layer(init, apply)` is one row with
its output shape and parameters (from `jax.eval_shape` of its init); what it computes is unknown,
so it counts no activations or FLOPs and is assumed not to grow the receptive field (its row's
note says so). A ReLU that `serial` runs inside the Conv2D before it (one op) is named so:
"1 ReLU (fused into 0)"; its row counts as before.

Any number of spatial axes: a signal's receptive field is one number, a volume's three. Layers
that resample (a transposed convolution, `Upsample`, `PixelShuffle`, adaptive pooling) make the
distance between neighbouring units a fraction of an input cell: the field is tracked exactly
(fractions) and shown rounded up to whole input cells.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import jax

from fcnn import _args
from fcnn.layers.combinators import fusions

_CONVS = ("Conv1D", "Conv2D", "Conv3D")
_TRANSPOSED = ("ConvTranspose1D", "ConvTranspose2D", "ConvTranspose3D")
_POOLS = tuple(f"{kind}Pool{r}D" for kind in ("Max", "Avg") for r in (1, 2, 3))
_GLOBAL = tuple(f"Global{kind}Pool{r}D" for kind in ("Max", "Avg") for r in (1, 2, 3))
_COUNTED = (*_CONVS, *_TRANSPOSED, "Dense", *_POOLS, *_GLOBAL)
_RESAMPLING = ("Upsample", "PixelShuffle", "PixelUnshuffle", "AdaptiveAvgPool1D",
               "AdaptiveAvgPool2D", "AdaptiveAvgPool3D")


class Row(NamedTuple):
    name: str  # position and type, e.g. "3 Conv2D" or "5.block.0 Conv2D"
    output_shape: tuple
    params: int
    activations: int
    flops: int
    receptive_field: tuple[int, ...]
    note: str  # non-empty when a window does not tile its input (cells dropped by the floor)
    state: int = 0  # state entries (batch norm's running statistics), apart from params


class Summary(NamedTuple):
    rows: list[Row]
    total_params: int
    total_activations: int
    total_flops: int
    total_state: int = 0  # state entries, not parameters (a stateless model: 0)

    def __str__(self) -> str:
        """The table; a "state" column after "params" when the model has state."""
        stateful = self.total_state > 0
        head = ("layer", "output shape", "params", *(("state",) if stateful else ()),
                "activations", "FLOPs", "RF", "")
        body = [
            (r.name, "x".join(map(str, _flat(r.output_shape))), f"{r.params:,}",
             *((f"{r.state:,}",) if stateful else ()),
             f"{r.activations:,}", f"{r.flops:,}", "x".join(map(str, r.receptive_field)),
             ("! " + r.note) if r.note else "")
            for r in self.rows
        ]
        total = ("total", "", f"{self.total_params:,}",
                 *((f"{self.total_state:,}",) if stateful else ()),
                 f"{self.total_activations:,}", f"{self.total_flops:,}", "", "")
        widths = [max(len(line[i]) for line in [head, *body, total]) for i in range(len(head))]

        def fmt(line):
            cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(line[2:-1], widths[2:-1])]
            return "  ".join(cells + [line[-1]]).rstrip()

        rule = "-" * len(fmt(head))
        return "\n".join([fmt(head), rule, *map(fmt, body), rule, fmt(total)])


def _flat(shape):
    if shape and isinstance(shape[0], tuple):  # parallel: a tuple of shapes
        return ["(" + ",".join(map(str, s)) + ")" for s in shape]
    return list(shape)


class _Field(NamedTuple):
    size: tuple[Fraction, ...]  # receptive field, input cells, per spatial axis
    jump: tuple[Fraction, ...]  # input cells between neighbouring units

    @property
    def cells(self) -> tuple[int, ...]:
        """The field in whole input cells (rounded up)."""
        return tuple(math.ceil(v) for v in self.size)

    def grow(self, spans, steps):
        """Each unit reads `spans[i]` units of the layer before along axis i (1: the same
        field), `steps[i]` of them apart from its neighbour's (fractions for upsampling)."""
        return _Field(tuple(r + (f - 1) * j for r, f, j in zip(self.size, spans, self.jump)),
                      tuple(j * Fraction(s) for j, s in zip(self.jump, steps)))


def _resampled(kind, config, shape, out, field):
    """The field after a resampling layer (see the module docstring)."""
    spatial, out_spatial = shape[:-1], out[:-1]
    if len(spatial) != len(field.size):
        return field
    ratio = [Fraction(n, m) for n, m in zip(spatial, out_spatial)]  # input cells per output
    if kind == "Upsample":  # nearest reads one cell, linear interpolation two neighbours
        span = 1 if config["method"] == "nearest" else 2
        return field.grow([span] * len(ratio), ratio)
    if kind == "PixelShuffle":
        return field.grow([1] * len(ratio), ratio)
    # space to depth and adaptive bins: each output reads a block of up to ceil(n / m) + 1
    # cells (PyTorch's bins overlap where m does not divide n)
    spans = [math.ceil(r) + (0 if r.denominator == 1 else 1) for r in ratio]
    return field.grow(spans, ratio)


def _entries(structs) -> int:
    return sum(math.prod(s.shape) for s in jax.tree_util.tree_leaves(structs))


def _param_count(layer, shape) -> int:
    return _entries(jax.eval_shape(lambda k: layer.init(k, shape)[0], jax.random.key(0)))


def _state_count(layer, shape) -> int:
    return _entries(jax.eval_shape(lambda: layer.init_state(shape))) if layer.stateful else 0


def _leaf(layer, shape, name, field, input_hw):
    info = layer.info
    out = info.shape(shape)
    kind, window = info.kind, info.window
    if kind == "Layer":  # a user's: its output need not even be one array
        flops, note = 0, "user Layer: receptive field taken as unchanged, FLOPs not counted"
    else:
        flops, note = math.prod(out), ""  # elementwise: one op per output
    rank = len(window.kernel) if window is not None else 0
    taps = math.prod(window.kernel) if window is not None else 0
    if window is not None and window.transposed:
        # output q reads the input cells i with i*S + a*d - p = q: at most
        # floor((F_eff - 1) / S) + 1 of them, 1/S of an input cell from its neighbour's
        spans = [(f - 1) // s + 1 for f, s in zip(window.effective, window.stride)]
        field = field.grow(spans, [Fraction(1, s) for s in window.stride])
        # each input cell scatters its taps x C_out/groups multiply-adds
        flops = 2 * math.prod(shape) * taps * out[-1] // info.config["groups"]
    elif window is not None:  # conv / pool: the field grows by (F_eff - 1) jumps, jumps by S
        eff, stride = window.effective, window.stride
        spatial = shape[:rank]
        dropped = [_args.remainder(n, f, s, p) for n, f, s, p in
                   zip(spatial, eff, stride, window.pads(spatial, kind))]
        if any(dropped):
            drops = (f"{dropped[0]} row(s), {dropped[1]} col(s)" if rank == 2
                     else f"{', '.join(map(str, dropped))} cell(s) along its axes")
            note = (f"window {'x'.join(map(str, eff))} stride {'x'.join(map(str, stride))} "
                    f"does not tile {'x'.join(map(str, spatial))} (+padding): drops {drops}")
        field = field.grow(eff, stride)
        flops = 2 * math.prod(out) * taps * shape[-1] // info.config["groups"] \
            if kind in _CONVS else math.prod(out) * taps
    elif kind in _RESAMPLING:
        field = _resampled(kind, info.config, shape, out, field)
        flops = math.prod(out) * (0 if kind.startswith("Pixel") else 1)
    elif kind in ("Dense", "Flatten", *_GLOBAL):  # every unit sees the whole input
        field = _Field(tuple(Fraction(n) for n in input_hw), field.jump)
        flops = {"Dense": 2 * shape[0] * out[0], "Flatten": 0}.get(kind, math.prod(shape))
    elif kind in ("Dropout", "Concat", "PadChannels", "Identity"):  # no arithmetic
        flops = 0
    activations = math.prod(out) if kind in _COUNTED else 0
    row = Row(name, tuple(out), _param_count(layer, shape), activations, flops, field.cells,
              note, _state_count(layer, shape))
    return out, field, [row]


def _widest(fields):
    rank = len(fields[0].size)
    return _Field(tuple(max(f.size[i] for f in fields) for i in range(rank)),
                  tuple(max(f.jump[i] for f in fields) for i in range(rank)))


def _fused_into(layer, name):
    """The leaf a following layer is fused into: `layer`, a serial's last leaf, or a
    residual's block's (with the residual's add)."""
    add = ""
    while layer.info.kind in ("serial", "residual"):
        if layer.info.kind == "residual":
            name, layer, add = f"{name}.block", layer.info.children[0], " with the add"
        else:
            name = f"{name}.{len(layer.info.children) - 1}"
            layer = layer.info.children[-1]
    return name + add


def _walk(layer, shape, prefix, field, input_hw):
    info = layer.info
    if info.kind == "serial":
        rows, fused = [], fusions(info.children)
        for i, child in enumerate(info.children):
            shape, field, more = _walk(child, shape, f"{prefix}{i}.", field, input_hw)
            if i - 1 in fused:  # runs inside the layer before it (serial's fusion)
                into = _fused_into(info.children[i - 1], f"{prefix}{i - 1}")
                more = [more[0]._replace(name=f"{more[0].name} (fused into {into})")]
            rows += more
        return shape, field, rows
    if info.kind == "parallel":
        outs, fields, rows = [], [], []
        for i, child in enumerate(info.children):
            out, f, more = _walk(child, shape, f"{prefix}{i}.", field, input_hw)
            outs.append(out), fields.append(f)
            rows += more
        return tuple(outs), _widest(fields), rows
    if info.kind == "residual":
        out, f_block, rows = _walk(info.children[0], shape, f"{prefix}block.", field, input_hw)
        fields = [f_block, field]
        if len(info.children) > 1:
            _, f_short, more = _walk(info.children[1], shape, f"{prefix}shortcut.", field,
                                     input_hw)
            fields[1] = f_short
            rows += more
        return out, _widest(fields), rows
    return _leaf(layer, shape, f"{prefix.rstrip('.')} {info.kind}".strip(), field, input_hw)


def summary(layer, input_shape) -> Summary:
    """The table of `layer` on one example of `input_shape`, from shapes alone.

    Args:
      layer: any `fcnn.layers.Layer`.
      input_shape: per-example shape, e.g. `(224, 224, 3)`.

    Returns:
      `Summary(rows, total_params, total_activations, total_flops, total_state)`; `print()` it
      for the table. State (batch norm's running statistics) is counted apart from parameters.

    Raises:
      ValueError: the layer's own shape errors, naming its position.
    """
    input_shape = tuple(input_shape)
    layer.info.shape(input_shape)  # position-naming errors before anything else
    # an example's spatial axes: all but the channels (an image's H, W; a signal's L); a
    # vector (an MLP's input) is shown as an image of one pixel
    input_hw = tuple(input_shape[:-1]) if len(input_shape) >= 2 else (1, 1)
    ones = (Fraction(1),) * len(input_hw)
    _, _, rows = _walk(layer, input_shape, "", _Field(ones, ones), input_hw)
    rows = [Row("Input", input_shape, 0, math.prod(input_shape), 0, (1,) * len(input_hw), ""),
            *rows]
    return Summary(rows, sum(r.params for r in rows), sum(r.activations for r in rows),
                   sum(r.flops for r in rows), sum(r.state for r in rows))
