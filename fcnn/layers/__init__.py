"""fcnn.layers: every constructor returns `Layer(init, apply)` (see `_base` for the contract)."""

from fcnn.layers._base import Layer, LayerError, LayerInfo
from fcnn.layers.combinators import parallel, residual, serial
from fcnn.layers.core import (
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    LocalResponseNorm,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)

__all__ = [
    "AvgPool2D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "Layer",
    "LayerError",
    "LayerInfo",
    "LeakyReLU",
    "LocalResponseNorm",
    "MaxPool2D",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "parallel",
    "residual",
    "serial",
]
