"""fcnn: a functional convolutional-network library on JAX with hand-written backward rules."""

from fcnn import init, layers, ops, reference, shapes, testing, tuning
from fcnn.summary import Summary, summary

__all__ = [
    "Summary",
    "init",
    "layers",
    "ops",
    "reference",
    "shapes",
    "summary",
    "testing",
    "tuning",
]
