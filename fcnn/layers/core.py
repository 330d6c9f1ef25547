"""Leaf layers: each constructor validates and normalises its configuration once, and returns a
`Layer(init, apply)` whose apply calls op functions bound from `fcnn.ops` (`with_ops` rebinds
them to another module)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fcnn import _args
from fcnn import init as initializers
from fcnn.layers._base import (
    RESIDUAL_RELU,
    Layer,
    LayerError,
    Window,
    as_shape,
    batched,
    config_error,
    image_shape,
    leaf,
    missing_state,
    op,
)
from fcnn.ops.convolution.algorithms import ALGORITHMS
from fcnn.ops.dropout import check_rate
from fcnn.ops.lrn import config as lrn_config
from fcnn.ops.pad import MODES as PAD_MODES

CONV_ALGORITHMS = ("auto", *ALGORITHMS)


def _window_shape(layer, input_shape, window: Window, out_channels=None):
    """Output `(*spatial, C)` of `window` over `input_shape`; errors as LayerErrors."""
    rank = len(window.kernel)
    *spatial, c = image_shape(layer, input_shape, rank)
    pads = window.pads(tuple(spatial), layer)
    config_error(layer, _args.check_fits, layer, tuple(spatial), window.effective, pads,
                 "kernel" if out_channels else "window", dilated=out_channels is not None)
    out = (_args.output_size(n, f, s, p)
           for n, f, s, p in zip(spatial, window.effective, window.stride, pads))
    return (*out, c if out_channels is None else out_channels)


def Conv1D(out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, use_bias=True,
           w_init=None, b_init=None, algorithm="auto", padding_mode="zeros",
           precision=None) -> Layer:
    """1-D convolution of a signal `(L, C)`; params `{"w": (k, C_in // groups, out_channels),
    "b": (out,)}`; everything else as `Conv2D` (`fcnn.ops.conv1d`)."""
    return _conv("Conv1D", 1, out_channels, kernel_size, stride, padding, dilation, groups,
                 use_bias, w_init, b_init, algorithm, padding_mode, precision)


def Conv2D(out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, use_bias=True,
           w_init=None, b_init=None, algorithm="auto", padding_mode="zeros",
           precision=None) -> Layer:
    """2-D convolution; params `{"w": (kh, kw, C_in // groups, out_channels), "b": (out,)}`.

    `padding_mode` ("zeros", "reflect", "replicate" or "circular", as PyTorch's Conv2d) fills
    the `padding` cells: other than "zeros" the input goes through the ops module's
    `pad(x, pads, mode)` and the convolution takes no padding (the same output size and
    receptive field; the config names the mode only when it is not "zeros").

    Followed by a `ReLU` inside `serial`, the two run as one op, `conv2d(..., activation="relu")`
    (the same params, maths and derivatives; one native call each way on a CPU with the native
    kernels); `summary` marks such a pair.

    `w_init` defaults to he_normal, `b_init` to zeros. `algorithm` is one of `CONV_ALGORITHMS`
    ("auto" or as `fcnn.ops.conv2d`); it is passed to the op only when not "auto", so any
    module's `conv2d` serves an "auto" layer (`with_ops`)."""
    return _conv("Conv2D", 2, out_channels, kernel_size, stride, padding, dilation, groups,
                 use_bias, w_init, b_init, algorithm, padding_mode, precision)


def Conv3D(out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, use_bias=True,
           w_init=None, b_init=None, algorithm="auto", padding_mode="zeros",
           precision=None) -> Layer:
    """3-D convolution of a volume `(D, H, W, C)`; params `{"w": (kd, kh, kw, C_in // groups,
    out_channels), "b": (out,)}`; everything else as `Conv2D` (`fcnn.ops.conv3d`)."""
    return _conv("Conv3D", 3, out_channels, kernel_size, stride, padding, dilation, groups,
                 use_bias, w_init, b_init, algorithm, padding_mode, precision)


def _conv(name, rank, out_channels, kernel_size, stride, padding, dilation, groups, use_bias,
          w_init, b_init, algorithm, padding_mode, precision) -> Layer:
    op_name = f"conv{rank}d"
    out_channels = _args.as_int(out_channels, name, "out_channels", minimum=1)
    window = Window(_args.as_tuple(kernel_size, name, "kernel_size", rank),
                    _args.as_tuple(stride, name, "stride", rank),
                    _args.padding_form(padding, name, rank),
                    _args.as_tuple(dilation, name, "dilation", rank))
    groups = _args.as_int(groups, name, "groups", minimum=1)
    algorithm = _args.as_choice(algorithm, name, "algorithm", CONV_ALGORITHMS)
    padding_mode = _args.as_choice(padding_mode, name, "padding_mode", PAD_MODES)
    precision = _args.as_precision(precision, name)
    if out_channels % groups:
        raise ValueError(f"{name}: `groups` (={groups}) must divide `out_channels` "
                         f"(={out_channels}).")
    own = initializers.owned(w_init, b_init)
    w_init = w_init or initializers.he_normal()
    b_init = b_init or initializers.zeros()

    def shape(input_shape):
        c = image_shape(name, input_shape, rank)[-1]
        if c % groups:
            raise LayerError(name, f"`groups` (={groups}) must divide the input channels "
                                   f"(={c}), got input shape {tuple(input_shape)}.")
        return _window_shape(name, input_shape, window, out_channels)

    def init(key, input_shape):
        out = shape(input_shape)
        k_w, k_b = initializers.split(key)
        params = {"w": w_init(k_w, (*window.kernel, input_shape[-1] // groups, out_channels),
                              groups=groups)}
        if use_bias:
            params["b"] = b_init(k_b, (out_channels,))
        return params, out

    def bind(module):
        extra = {} if algorithm == "auto" else {"algorithm": algorithm}
        if precision is not None:
            extra["precision"] = precision
        kwargs = dict(stride=window.stride, padding=window.padding, dilation=window.dilation,
                      groups=groups, **extra)
        conv = op(module, op_name, name, kwargs)
        if padding_mode != "zeros":
            pad = op(module, "pad", name, {"mode": padding_mode})
            kwargs["padding"] = 0
            conv_zeros = conv

            def conv(x, w, b, **kw):  # the border filled by `pad`, then no padding
                xb = jnp.asarray(x)
                xb = xb if xb.ndim == rank + 2 else xb[None]
                pads = window.pads(xb.shape[1:-1], name)
                y = conv_zeros(pad(xb, pads, mode=padding_mode), w, b, **kw)
                return y if jnp.ndim(x) == rank + 2 else y[0]

        def apply(params, x, *, key=None, train=False):
            return conv(x, params["w"], params.get("b"), **kwargs)

        try:  # a module whose conv takes `activation` runs Conv -> ReLU as one op
            op(module, op_name, name, {**kwargs, "activation": "relu"})
        except LayerError:
            return apply

        def apply_relu(params, x, *, key=None, train=False):
            return conv(x, params["w"], params.get("b"), activation="relu", **kwargs)

        return apply, {"ReLU": apply_relu}

    config = dict(out_channels=out_channels, kernel_size=window.kernel, stride=window.stride,
                  padding=window.padding, dilation=window.dilation,
                  groups=groups, use_bias=use_bias, algorithm=algorithm)
    if padding_mode != "zeros":  # (configs recorded before the argument stay the same)
        config["padding_mode"] = padding_mode
    if precision is not None:  # (the same)
        config["precision"] = precision
    return leaf(name, config, shape, init, bind, window=window, own_init=own)


def ConvTranspose1D(out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                    dilation=1, groups=1, use_bias=True, w_init=None, b_init=None,
                    algorithm="auto", precision=None) -> Layer:
    """1-D transposed convolution (`fcnn.ops.conv_transpose1d`); as `ConvTranspose2D`."""
    return _conv_transpose("ConvTranspose1D", 1, out_channels, kernel_size, stride, padding,
                           output_padding, dilation, groups, use_bias, w_init, b_init, algorithm,
                           precision)


def ConvTranspose2D(out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                    dilation=1, groups=1, use_bias=True, w_init=None, b_init=None,
                    algorithm="auto", precision=None) -> Layer:
    """2-D transposed convolution (PyTorch's ConvTranspose2d; `fcnn.ops.conv_transpose2d`):
    params `{"w": (kh, kw, out_channels // groups, C_in), "b": (out_channels,)}`, the kernel of
    the convolution it transposes. Output `(H - 1) S - p_lo - p_hi + d (k - 1) +
    output_padding + 1` per axis: a DCGAN generator's 4x4, stride 2, padding 1 doubles the
    size. `padding`: an int, one per axis or `(low, high)` pairs (no strings).
    `w_init` defaults to he_normal over fan_in = kh·kw·out_channels/groups (PyTorch's fan for
    this weight), `b_init` to zeros."""
    return _conv_transpose("ConvTranspose2D", 2, out_channels, kernel_size, stride, padding,
                           output_padding, dilation, groups, use_bias, w_init, b_init, algorithm,
                           precision)


def ConvTranspose3D(out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                    dilation=1, groups=1, use_bias=True, w_init=None, b_init=None,
                    algorithm="auto", precision=None) -> Layer:
    """3-D transposed convolution (`fcnn.ops.conv_transpose3d`); as `ConvTranspose2D`."""
    return _conv_transpose("ConvTranspose3D", 3, out_channels, kernel_size, stride, padding,
                           output_padding, dilation, groups, use_bias, w_init, b_init, algorithm,
                           precision)


def _conv_transpose(name, rank, out_channels, kernel_size, stride, padding, output_padding,
                    dilation, groups, use_bias, w_init, b_init, algorithm, precision) -> Layer:
    from fcnn.ops.conv import transposed_geometry, transposed_size

    op_name = f"conv_transpose{rank}d"
    out_channels = _args.as_int(out_channels, name, "out_channels", minimum=1)
    stride, pads, dilation, extra = transposed_geometry(name, rank, stride, padding,
                                                        output_padding, dilation)
    window = Window(_args.as_tuple(kernel_size, name, "kernel_size", rank), stride, pads,
                    dilation, transposed=True, output_padding=extra)
    groups = _args.as_int(groups, name, "groups", minimum=1)
    algorithm = _args.as_choice(algorithm, name, "algorithm", CONV_ALGORITHMS)
    if out_channels % groups:
        raise ValueError(f"{name}: `groups` (={groups}) must divide `out_channels` "
                         f"(={out_channels}).")
    own = initializers.owned(w_init, b_init)
    w_init = w_init or initializers.he_normal()
    b_init = b_init or initializers.zeros()

    def shape(input_shape):
        *spatial, c = image_shape(name, input_shape, rank)
        if c % groups:
            raise LayerError(name, f"`groups` (={groups}) must divide the input channels "
                                   f"(={c}), got input shape {tuple(input_shape)}.")
        out = tuple(transposed_size(n, k, s, p, e, d) for n, k, s, p, e, d in zip(
            spatial, window.kernel, window.stride, window.padding, window.output_padding,
            window.dilation))
        if min(out) < 1:
            raise LayerError(name, f"the output would have size {out} on input "
                                   f"{tuple(input_shape)}: reduce the padding.")
        return (*out, out_channels)

    def init(key, input_shape):
        out = shape(input_shape)
        k_w, k_b = initializers.split(key)
        params = {"w": w_init(k_w, (*window.kernel, out_channels // groups, input_shape[-1]),
                              groups=groups)}
        if use_bias:
            params["b"] = b_init(k_b, (out_channels,))
        return params, out

    precision = _args.as_precision(precision, name)

    def bind(module):
        extra = {} if algorithm == "auto" else {"algorithm": algorithm}
        if precision is not None:
            extra["precision"] = precision
        kwargs = dict(stride=window.stride, padding=window.padding,
                      output_padding=window.output_padding, dilation=window.dilation,
                      groups=groups, **extra)
        fn = op(module, op_name, name, kwargs)

        def apply(params, x, *, key=None, train=False):
            return fn(x, params["w"], params.get("b"), **kwargs)

        return apply

    config = dict(out_channels=out_channels, kernel_size=window.kernel, stride=window.stride,
                  padding=window.padding, output_padding=window.output_padding,
                  dilation=window.dilation, groups=groups, use_bias=use_bias,
                  algorithm=algorithm)
    if precision is not None:
        config["precision"] = precision
    return leaf(name, config, shape, init, bind, window=window, own_init=own)


def _pool(name, op_name, window, stride, padding, rank=2) -> Layer:
    """A pooling leaf calling `op_name` of its ops module as `fn(x, window, stride, padding)`."""
    kernel = _args.as_tuple(window, name, "window", rank)
    geometry = Window(kernel, kernel if stride is None else _args.as_tuple(stride, name, "stride",
                                                                           rank),
                      _args.padding_form(padding, name, rank), (1,) * rank)

    def shape(input_shape):
        return _window_shape(name, input_shape, geometry)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):
        pool = op(module, op_name, name)

        def apply(params, x, *, key=None, train=False):
            return pool(x, geometry.kernel, geometry.stride, geometry.padding)

        return apply

    config = dict(window=kernel, stride=geometry.stride, padding=geometry.padding)
    return leaf(name, config, shape, init, bind, window=geometry)


def MaxPool1D(window, stride=None, padding=0) -> Layer:
    """Max pooling of a signal `(L, C)`; `stride` defaults to `window`."""
    return _pool("MaxPool1D", "max_pool1d", window, stride, padding, 1)


def MaxPool2D(window, stride=None, padding=0) -> Layer:
    """Max pooling; `stride` defaults to `window`."""
    return _pool("MaxPool2D", "max_pool2d", window, stride, padding)


def MaxPool3D(window, stride=None, padding=0) -> Layer:
    """Max pooling of a volume `(D, H, W, C)`; `stride` defaults to `window`."""
    return _pool("MaxPool3D", "max_pool3d", window, stride, padding, 3)


def AvgPool1D(window, stride=None, padding=0) -> Layer:
    """Average pooling of a signal `(L, C)` (padded zeros count); `stride` defaults to
    `window`."""
    return _pool("AvgPool1D", "avg_pool1d", window, stride, padding, 1)


def AvgPool2D(window, stride=None, padding=0) -> Layer:
    """Average pooling (padded zeros count); `stride` defaults to `window`."""
    return _pool("AvgPool2D", "avg_pool2d", window, stride, padding)


def AvgPool3D(window, stride=None, padding=0) -> Layer:
    """Average pooling of a volume `(D, H, W, C)` (padded zeros count)."""
    return _pool("AvgPool3D", "avg_pool3d", window, stride, padding, 3)


def GlobalAvgPool1D() -> Layer:
    """The mean of each channel over a whole signal: `(L, C) -> (C,)`."""
    return _global("GlobalAvgPool1D", "avg", 1)


def GlobalAvgPool2D() -> Layer:
    """The mean of each channel over the whole (H, W) map: `(H, W, C) -> (C,)`, whatever the
    input size (ResNet's and GoogLeNet's last pooling, as torchvision's AdaptiveAvgPool2d(1)
    followed by a flatten). It runs the average pool of its ops module with the window and
    stride equal to the map's size."""
    return _global("GlobalAvgPool2D", "avg", 2)


def GlobalAvgPool3D() -> Layer:
    """The mean of each channel over a whole volume: `(D, H, W, C) -> (C,)`."""
    return _global("GlobalAvgPool3D", "avg", 3)


def GlobalMaxPool1D() -> Layer:
    """The maximum of each channel over a whole signal: `(L, C) -> (C,)` (a NaN wins; the
    gradient goes to the first maximum, as `max_pool1d`'s)."""
    return _global("GlobalMaxPool1D", "max", 1)


def GlobalMaxPool2D() -> Layer:
    """The maximum of each channel over the whole (H, W) map: `(H, W, C) -> (C,)`."""
    return _global("GlobalMaxPool2D", "max", 2)


def GlobalMaxPool3D() -> Layer:
    """The maximum of each channel over a whole volume: `(D, H, W, C) -> (C,)`."""
    return _global("GlobalMaxPool3D", "max", 3)


def _global(name, kind, rank) -> Layer:
    """The `kind` pool of its ops module with the window and stride equal to the map's size."""

    def shape(input_shape):
        return (image_shape(name, input_shape, rank)[-1],)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):
        pool = op(module, f"{kind}_pool{rank}d", name)

        def apply(params, x, *, key=None, train=False):
            xb, was_batched = batched(jnp.asarray(x), rank + 1, name)
            window = xb.shape[1:-1]
            y = pool(xb, window, window, 0).reshape(xb.shape[0], xb.shape[-1])
            return y if was_batched else y[0]

        return apply

    return leaf(name, {}, shape, init, bind)


def Dense(out_features, use_bias=True, w_init=None, b_init=None, precision=None) -> Layer:
    """Fully connected; params `{"w": (in, out_features), "b": (out_features,)}`; `precision`
    as `fcnn.ops.dense`'s (passed to the op, and named in the config, only when given)."""
    name = "Dense"
    out_features = _args.as_int(out_features, name, "out_features", minimum=1)
    precision = _args.as_precision(precision, name)
    extra = {} if precision is None else {"precision": precision}
    own = initializers.owned(w_init, b_init)
    w_init = w_init or initializers.he_normal()
    b_init = b_init or initializers.zeros()

    def shape(input_shape):
        input_shape = as_shape(name, input_shape)
        if len(input_shape) != 1:
            raise LayerError(name, f"expects (features,) input, got {input_shape}. "
                                   "Put a Flatten() before it.")
        return (out_features,)

    def init(key, input_shape):
        out = shape(input_shape)
        k_w, k_b = initializers.split(key)
        params = {"w": w_init(k_w, (input_shape[0], out_features))}
        if use_bias:
            params["b"] = b_init(k_b, (out_features,))
        return params, out

    def bind(module):
        dense = op(module, "dense", name, extra)

        def apply(params, x, *, key=None, train=False):
            return dense(x, params["w"], params.get("b"), **extra)

        return apply

    return leaf(name, dict(out_features=out_features, use_bias=use_bias, **extra), shape, init,
                bind, own_init=own)


def _elementwise(name, op_name, **config) -> Layer:
    """A shape-preserving leaf calling `op_name` of its ops module as `fn(x, **config)`."""

    def shape(input_shape):
        return as_shape(name, input_shape)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):
        fn = op(module, op_name, name, config)

        def apply(params, x, *, key=None, train=False):
            return fn(x, **config)

        return apply

    return leaf(name, config, shape, init, bind)


def Identity() -> Layer:
    """Its input, unchanged: a branch of a `parallel` that passes its input through (a U-Net's
    skip connection), as PyTorch's `nn.Identity`."""
    name = "Identity"

    def shape(input_shape):
        if isinstance(input_shape, tuple) and input_shape and isinstance(input_shape[0], tuple):
            return input_shape  # a parallel's outputs, passed through
        return as_shape(name, input_shape)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):  # no op to look up
        def apply(params, x, *, key=None, train=False):
            return x

        return apply

    return leaf(name, {}, shape, init, bind)


def ReLU() -> Layer:
    return _elementwise("ReLU", "relu")


def LeakyReLU(negative_slope=0.01) -> Layer:
    slope = _args.as_float(negative_slope, "LeakyReLU", "negative_slope")
    return _elementwise("LeakyReLU", "leaky_relu", negative_slope=slope)


def Tanh() -> Layer:
    return _elementwise("Tanh", "tanh")


def Sigmoid() -> Layer:
    return _elementwise("Sigmoid", "sigmoid")


def LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0) -> Layer:
    """AlexNet's NORM layer (`ops.local_response_norm`, alpha not divided by size)."""
    size, alpha, beta, k = lrn_config("LocalResponseNorm", size, alpha, beta, k)
    return _elementwise("LocalResponseNorm", "local_response_norm",
                        size=size, alpha=alpha, beta=beta, k=k)


def Dropout(rate) -> Layer:
    """Inverted dropout; `rate` is the **drop** probability. Identity unless `train=True`, which
    needs a `key`."""
    name = "Dropout"
    rate = check_rate(name, rate)

    def shape(input_shape):
        return as_shape(name, input_shape)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):
        dropout = op(module, "dropout", name)

        def apply(params, x, *, key=None, train=False):
            if not train:
                return x
            if key is None:
                raise ValueError(f"{name}: apply(..., train=True) needs a PRNG `key` "
                                 "(e.g. key=jax.random.key(step)).")
            return dropout(key, x, rate)

        return apply

    return leaf(name, dict(rate=rate), shape, init, bind)


def Flatten(ndim=3) -> Layer:
    """Flatten each example's `ndim` axes (default 3: an (H, W, C) image) into one."""
    name = "Flatten"
    ndim = _args.as_int(ndim, name, "ndim", minimum=1)

    def shape(input_shape):
        input_shape = as_shape(name, input_shape)
        if len(input_shape) != ndim:
            raise LayerError(name, f"expects inputs of rank {ndim}, got {input_shape}.")
        return (math.prod(input_shape),)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):  # a reshape: no op to look up
        def apply(params, x, *, key=None, train=False):
            xb, was_batched = batched(jnp.asarray(x), ndim, name)
            y = xb.reshape(xb.shape[0], -1)
            return y if was_batched else y[0]

        return apply

    return leaf(name, dict(ndim=ndim), shape, init, bind)


def AdaptiveAvgPool1D(output_size) -> Layer:
    """`ops.adaptive_avg_pool` of a signal `(L, C)` to `output_size` (PyTorch's bins)."""
    return _adaptive("AdaptiveAvgPool1D", output_size, 1)


def AdaptiveAvgPool2D(output_size) -> Layer:
    """`ops.adaptive_avg_pool` of an image `(H, W, C)` to `output_size` (an int or a pair,
    None keeping that axis): torchvision's AlexNet and VGG end their features with one."""
    return _adaptive("AdaptiveAvgPool2D", output_size, 2)


def AdaptiveAvgPool3D(output_size) -> Layer:
    """`ops.adaptive_avg_pool` of a volume `(D, H, W, C)` to `output_size`."""
    return _adaptive("AdaptiveAvgPool3D", output_size, 3)


def _adaptive(name, output_size, d):
    if isinstance(output_size, (list, tuple)):
        if len(output_size) != d:
            raise ValueError(f"{name}: `output_size` needs {d} entries, got {output_size!r}.")
        sizes = tuple(None if m is None else _args.as_int(m, name, "output_size", minimum=1)
                      for m in output_size)
    else:
        sizes = (_args.as_int(output_size, name, "output_size", minimum=1),) * d

    def shape(input_shape):
        input_shape = as_shape(name, input_shape)
        if len(input_shape) != d + 1:
            raise LayerError(name, f"expects inputs of rank {d + 1} ({d} spatial axes and the "
                                   f"channels), got {input_shape}.")
        return (*(n if m is None else m for n, m in zip(input_shape[:-1], sizes)),
                input_shape[-1])

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):
        fn = op(module, "adaptive_avg_pool", name)

        def apply(params, x, *, key=None, train=False):
            xb, was_batched = batched(jnp.asarray(x), d + 1, name)
            y = fn(xb, sizes)
            return y if was_batched else y[0]

        return apply

    return leaf(name, dict(output_size=sizes), shape, init, bind)


def Upsample(scale=None, *, size=None, method="nearest", align_corners=None,
             spatial=2) -> Layer:
    """`ops.upsample` of each example `(*S, C)` with `spatial` axes (PyTorch's `Upsample`:
    "nearest", or "linear"/"bilinear"/"trilinear" interpolation, `scale` or `size`)."""
    name = "Upsample"
    d = _args.as_int(spatial, name, "spatial", minimum=1)
    config = dict(scale=scale, size=size, method=method, align_corners=align_corners)

    def shape(input_shape):
        input_shape = as_shape(name, input_shape)
        if len(input_shape) != d + 1:
            raise LayerError(name, f"expects inputs of rank {d + 1} ({d} spatial axes and the "
                                   f"channels), got {input_shape}.")
        out = jax.eval_shape(lambda x: _up_op(x, config),
                             jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
        return tuple(out.shape[1:])

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):
        fn = op(module, "upsample", name)

        def apply(params, x, *, key=None, train=False):
            xb, was_batched = batched(jnp.asarray(x), d + 1, name)
            y = fn(xb, scale, size=size, method=method, align_corners=align_corners)
            return y if was_batched else y[0]

        return apply

    return leaf(name, dict(config, spatial=d), shape, init, bind)


def _up_op(x, config):
    from fcnn.ops.upsample import upsample

    return upsample(x, config["scale"], size=config["size"], method=config["method"],
                    align_corners=config["align_corners"])


def PixelShuffle(factor, spatial=2) -> Layer:
    """Depth to space (`ops.pixel_shuffle`, PyTorch's channel order): per example
    `(*S, C·r^d)` -> `(*(S·r), C)`, r = `factor`, d = `spatial` axes (1, 2 or 3: a signal, an
    image, a volume)."""
    return _shuffle("PixelShuffle", "pixel_shuffle", factor, spatial, up=True)


def PixelUnshuffle(factor, spatial=2) -> Layer:
    """Space to depth (`ops.pixel_unshuffle`), the inverse of `PixelShuffle`."""
    return _shuffle("PixelUnshuffle", "pixel_unshuffle", factor, spatial, up=False)


def _shuffle(name, op_name, factor, spatial, up):
    r = _args.as_int(factor, name, "factor", minimum=1)
    d = _args.as_int(spatial, name, "spatial", minimum=1)

    def shape(input_shape):
        input_shape = as_shape(name, input_shape)
        if len(input_shape) != d + 1:
            raise LayerError(name, f"expects inputs of rank {d + 1} ({d} spatial axes and the "
                                   f"channels), got {input_shape}.")
        *sizes, c = input_shape
        if up and c % r ** d:
            raise LayerError(name, f"the channels ({c}) must be divisible by factor**{d} = "
                                   f"{r ** d}, got input shape {input_shape}.")
        if not up and any(n % r for n in sizes):
            raise LayerError(name, f"every spatial size must be divisible by the factor {r}, "
                                   f"got input shape {input_shape}.")
        if up:
            return (*(n * r for n in sizes), c // r ** d)
        return (*(n // r for n in sizes), c * r ** d)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):
        fn = op(module, op_name, name)

        def apply(params, x, *, key=None, train=False):
            xb, was_batched = batched(jnp.asarray(x), d + 1, name)
            y = fn(xb, r)
            return y if was_batched else y[0]

        return apply

    return leaf(name, dict(factor=r, spatial=d), shape, init, bind)


def Concat() -> Layer:
    """Join a tuple of inputs (a `parallel`'s outputs) along the channel axis, the last: how
    GoogLeNet's inception modules join their branches (Szegedy et al. 2014). The inputs must
    agree on every axis but the channels."""
    name = "Concat"

    def shape(input_shape):
        if not (isinstance(input_shape, tuple) and input_shape
                and all(isinstance(s, tuple) for s in input_shape)):
            raise LayerError(name, f"expects a tuple of input shapes (a parallel's outputs), "
                                   f"got {input_shape}.")
        shapes = [as_shape(name, s) for s in input_shape]
        first = shapes[0]
        for i, s in enumerate(shapes[1:], 1):
            if len(s) != len(first) or s[:-1] != first[:-1]:
                raise LayerError(name, f"input {i} has shape {s}, input 0 {first}: all but the "
                                       "channels must agree.")
        return (*first[:-1], sum(s[-1] for s in shapes))

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):  # data movement: no op to look up
        def apply(params, xs, *, key=None, train=False):
            if not isinstance(xs, (tuple, list)):  # an array would be split along its rows
                raise TypeError(f"{name}: expects a tuple of arrays (a parallel's outputs), got "
                                f"one array of shape {tuple(jnp.shape(xs))}.")
            return jnp.concatenate([jnp.asarray(x) for x in xs], axis=-1)

        return apply

    return leaf(name, {}, shape, init, bind)


def _norm_shape(name, input_shape, ndim, groups=1):
    """`input_shape` checked for a normalisation layer: rank `ndim`, channels (the last axis)
    divisible by `groups`."""
    shape = as_shape(name, input_shape)
    if len(shape) != ndim:
        raise LayerError(name, f"expects inputs of rank {ndim} (`ndim`={ndim}: "
                               f"{'(H, W, C) images' if ndim == 3 else 'channels last'}), "
                               f"got {shape}.")
    if shape[-1] % groups:
        raise LayerError(name, f"`groups` (={groups}) must divide the input channels "
                               f"(={shape[-1]}), got input shape {shape}.")
    return shape


def _scale_shift(out_shape):
    """A normalisation layer's init result: ones and zeros per channel, and `out_shape`."""
    c = out_shape[-1]
    return {"gamma": jnp.ones((c,), jnp.float32), "beta": jnp.zeros((c,), jnp.float32)}, out_shape


def BatchNorm(momentum=0.9, eps=1e-5, ndim=3) -> Layer:
    """Batch normalisation (Ioffe & Szegedy 2015) with running statistics: a stateful layer.

    Params `{"gamma": (C,), "beta": (C,)}` (ones, zeros); state `{"mean": (C,), "var": (C,)}`
    (zeros, ones; float32 from `init_state`; a training step keeps them in the promotion of
    their dtype and the parameters': float64 with float64 parameters, float32 under bfloat16
    mixed precision), over the channels, the last axis of examples of rank `ndim` (3:
    (H, W, C) images; 1: features).

    `train=True` normalises with the batch's statistics over every axis but the channels
    (`ops.batch_norm`: N, H, W; biased variance) and returns the state updated as

        mean <- momentum * mean + (1 - momentum) * batch mean
        var  <- momentum * var  + (1 - momentum) * batch variance * M / (M - 1)

    with M = N*H*W values per channel: the running variance is the *unbiased* batch variance,
    as PyTorch and cuDNN keep it. `train=False` is the affine map with the running statistics
    (`ops.batch_norm_inference`); the state comes back unchanged. No gradient flows into the
    state.

    `momentum` is the weight of the old running value, as in Keras and Flax (default 0.9);
    PyTorch's `momentum` is the weight of the new batch value: PyTorch's p is fcnn's 1 - p
    (its default 0.1 is fcnn's 0.9). The statistics of a batch split over devices are the
    global batch's (the SPMD step computes them over the whole batch; docs/training.md).
    """
    name = "BatchNorm"
    momentum = _args.as_float(momentum, name, "momentum", minimum=0, below=1)
    eps = _args.as_float(eps, name, "eps", above=0)
    ndim = _args.as_int(ndim, name, "ndim", minimum=1)

    def shape(input_shape):
        return _norm_shape(name, input_shape, ndim)

    def init(key, input_shape):
        return _scale_shift(shape(input_shape))

    def init_state(input_shape):
        c = shape(input_shape)[-1]
        return {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}

    def bind(module):
        batch_norm = op(module, "batch_norm", name, {"eps": eps})
        inference = op(module, "batch_norm_inference", name, {"eps": eps})

        def run(params, x, train, state, activation, residual=None):
            mean, var = _running(state, params["gamma"].shape)
            xb, was_batched = batched(jnp.asarray(x), ndim, name)
            if train:
                m = xb.size // xb.shape[-1]
                if m < 2:
                    raise ValueError(f"{name}: train=True needs more than one value per channel "
                                     f"to take batch statistics, got x of shape "
                                     f"{tuple(jnp.shape(x))}.")
                extra = {} if activation is None else {"activation": activation}
                if residual is not None:
                    extra["residual"] = residual if was_batched else residual[None]
                y, b_mean, b_var = batch_norm(xb, params["gamma"], params["beta"], eps=eps,
                                              **extra)
                b_mean, b_var = jax.lax.stop_gradient((b_mean, b_var))
                # the statistics in the parameters' dtype, never below the state's: float64
                # parameters keep float64 statistics; mixed precision's bfloat16 copies of
                # float32 parameters leave them float32 (the promotion of the two)
                dt = jnp.promote_types(mean.dtype, params["gamma"].dtype)
                state = {"mean": momentum * mean.astype(dt) + (1 - momentum) * b_mean.astype(dt),
                         "var": momentum * var.astype(dt) + (1 - momentum) * (m / (m - 1))
                         * b_var.astype(dt)}
            else:
                y = inference(xb, params["gamma"], params["beta"], mean, var, eps=eps)
                if residual is not None:
                    y = y + (residual if was_batched else residual[None])
                y = y if activation is None else relu(y)
            return (y if was_batched else y[0]), state

        def _running(state, channels):
            if state is None:
                raise missing_state(name)
            if not (isinstance(state, dict) and set(state) == {"mean", "var"}
                    and all(jnp.shape(state[k]) == channels for k in state)):
                what = ({k: tuple(jnp.shape(v)) for k, v in state.items()}
                        if isinstance(state, dict) else type(state).__name__)
                raise ValueError(f"{name}: `state` must be {{'mean': {channels}, 'var': "
                                 f"{channels}}} (from init_state), got {what}.")
            return state["mean"], state["var"]

        def apply(params, x, *, key=None, train=False, state=None):
            return run(params, x, train, state, None)

        # a module whose batch_norm takes `activation` (and has a relu, for inference) runs
        # BatchNorm -> ReLU as one op in training; one whose batch_norm takes `residual` too,
        # the end of a basic block, relu(BatchNorm(x) + shortcut), for `residual`
        try:
            op(module, "batch_norm", name, {"eps": eps, "activation": "relu"})
            relu = op(module, "relu", name)
        except LayerError:
            return apply

        def apply_relu(params, x, *, key=None, train=False, state=None):
            return run(params, x, train, state, "relu")

        fused = {"ReLU": apply_relu}
        try:
            op(module, "batch_norm", name, {"eps": eps, "activation": "relu", "residual": None})
        except LayerError:
            return apply, fused

        def apply_add_relu(params, x, *, key=None, train=False, state=None, residual):
            return run(params, x, train, state, "relu", residual)

        fused[RESIDUAL_RELU] = apply_add_relu
        return apply, fused

    return leaf(name, dict(momentum=momentum, eps=eps, ndim=ndim), shape, init, bind,
                init_state=init_state)


def GroupNorm(groups, eps=1e-5, ndim=3) -> Layer:
    """Group normalisation (Wu & He 2018): each example's C channels in `groups` groups, each
    normalised over its channels and the spatial axes (`ops.group_norm`), then scaled and
    shifted per channel. Params `{"gamma": (C,), "beta": (C,)}`; no state, and no statistic
    crosses examples, so it is the same in training and evaluation and works with per-example
    gradients (`fcnn.privacy`). `groups=1` is layer norm over (H, W, C); `groups=C` instance
    norm. `ndim` is the rank of one example (3: (H, W, C) images)."""
    name = "GroupNorm"
    groups = _args.as_int(groups, name, "groups", minimum=1)
    eps = _args.as_float(eps, name, "eps", above=0)
    ndim = _args.as_int(ndim, name, "ndim", minimum=1)

    def shape(input_shape):
        return _norm_shape(name, input_shape, ndim, groups)

    def init(key, input_shape):
        return _scale_shift(shape(input_shape))

    def bind(module):
        group_norm = op(module, "group_norm", name, {"eps": eps})

        def apply(params, x, *, key=None, train=False):
            xb, was_batched = batched(jnp.asarray(x), ndim, name)
            y = group_norm(xb, params["gamma"], params["beta"], groups, eps=eps)
            return y if was_batched else y[0]

        return apply

    return leaf(name, dict(groups=groups, eps=eps, ndim=ndim), shape, init, bind)


def PadChannels(out_channels) -> Layer:
    """Zero channels appended to reach `out_channels` (the last axis): the parameter-free
    shortcut of He et al. 2015's option A, after a stride-2 subsampling, where a ResNet stage
    widens ("the shortcut still performs identity mapping, with extra zero entries padded for
    increasing dimensions")."""
    name = "PadChannels"
    out_channels = _args.as_int(out_channels, name, "out_channels", minimum=1)

    def shape(input_shape):
        input_shape = as_shape(name, input_shape)
        if input_shape[-1] > out_channels:
            raise LayerError(name, f"input has {input_shape[-1]} channels, more than "
                                   f"`out_channels` (={out_channels}).")
        return (*input_shape[:-1], out_channels)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def bind(module):  # data movement: no op to look up
        def apply(params, x, *, key=None, train=False):
            x = jnp.asarray(x)
            extra = out_channels - x.shape[-1]
            if extra < 0:
                raise ValueError(f"{name}: x has {x.shape[-1]} channels, more than "
                                 f"`out_channels` (={out_channels}).")
            return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])

        return apply

    return leaf(name, dict(out_channels=out_channels), shape, init, bind)
