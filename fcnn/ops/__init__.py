"""fcnn.ops: pure array functions, each carrying hand-written derivative rules.

`binding()`, `set_binding(name)` and `using_binding(name)` choose how the rules are bound to JAX:
"primitive" (default: forward mode, reverse mode and batching rules) or "custom_vjp" (reverse
mode only); see `fcnn.ops._binding`.
"""

from fcnn.ops._binding import binding as binding
from fcnn.ops._binding import set_binding as set_binding
from fcnn.ops._binding import using as using_binding  # noqa: F401 (public)
from fcnn.ops.activations import elu, leaky_relu, relu, sigmoid, tanh
from fcnn.ops.adaptive_pool import adaptive_avg_pool
from fcnn.ops.conv import (
    conv1d,
    conv1d_grad_input,
    conv1d_grad_kernel,
    conv2d,
    conv2d_grad_input,
    conv2d_grad_kernel,
    conv3d,
    conv3d_grad_input,
    conv3d_grad_kernel,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
)
from fcnn.ops.dense import dense
from fcnn.ops.dropout import dropout
from fcnn.ops.losses import hinge, mse, softmax_cross_entropy
from fcnn.ops.lrn import local_response_norm
from fcnn.ops.norm import batch_norm, batch_norm_inference, group_norm
from fcnn.ops.pad import pad
from fcnn.ops.pool import (
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    max_pool1d,
    max_pool2d,
    max_pool3d,
)
from fcnn.ops.shuffle import pixel_shuffle, pixel_unshuffle
from fcnn.ops.upsample import upsample

__all__ = [
    "adaptive_avg_pool",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "batch_norm",
    "batch_norm_inference",
    "conv1d",
    "conv1d_grad_input",
    "conv1d_grad_kernel",
    "conv2d",
    "conv2d_grad_input",
    "conv2d_grad_kernel",
    "conv3d",
    "conv3d_grad_input",
    "conv3d_grad_kernel",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "dense",
    "dropout",
    "elu",
    "group_norm",
    "hinge",
    "leaky_relu",
    "local_response_norm",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "mse",
    "pad",
    "pixel_shuffle",
    "pixel_unshuffle",
    "relu",
    "sigmoid",
    "softmax_cross_entropy",
    "tanh",
    "upsample",
]
