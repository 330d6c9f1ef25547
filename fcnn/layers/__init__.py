"""fcnn.layers: every constructor returns `Layer(init, apply)` (see `_base` for the contract);
`with_ops(layer, module)` runs a model's leaves on another ops module (e.g. `fcnn.reference`)."""

from fcnn.layers._base import Layer, LayerError, LayerInfo, Window, check_state, find, with_ops
from fcnn.layers.combinators import parallel, residual, serial
from fcnn.layers.core import (
    AvgPool2D,
    BatchNorm,
    Concat,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    GroupNorm,
    LeakyReLU,
    LocalResponseNorm,
    MaxPool2D,
    PadChannels,
    ReLU,
    Sigmoid,
    Tanh,
)

__all__ = [
    "AvgPool2D",
    "BatchNorm",
    "Concat",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2D",
    "GroupNorm",
    "Layer",
    "LayerError",
    "LayerInfo",
    "LeakyReLU",
    "LocalResponseNorm",
    "MaxPool2D",
    "PadChannels",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Window",
    "check_state",
    "find",
    "parallel",
    "residual",
    "serial",
    "with_ops",
]
