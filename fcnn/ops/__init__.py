"""fcnn.ops: pure array functions, each a ``jax.custom_vjp`` with a hand-written backward rule."""

from fcnn.ops.conv import conv2d, conv2d_grad_input, conv2d_grad_kernel

__all__ = [
    "conv2d",
    "conv2d_grad_input",
    "conv2d_grad_kernel",
]
