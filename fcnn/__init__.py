"""fcnn: a functional convolutional-network library on JAX with hand-written backward rules."""

from fcnn import ops

__all__ = ["ops"]
