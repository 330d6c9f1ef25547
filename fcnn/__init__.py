"""fcnn: a functional convolutional-network library on JAX with hand-written backward rules."""

from fcnn import ops, reference, testing

__all__ = [
    "ops",
    "reference",
    "testing",
]
