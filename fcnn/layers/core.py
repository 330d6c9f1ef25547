"""Leaf layers: each constructor validates its configuration and returns `Layer(init, apply)`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fcnn import _args, ops
from fcnn import init as initializers
from fcnn.layers._base import Layer, LayerError, as_shape, batched, config_error, image_shape, make
from fcnn.ops.dropout import check_rate
from fcnn.ops.lrn import config as lrn_config


def _window_shape(layer, input_shape, window, stride, padding, dilation, out_channels=None):
    """Output (H, W, C) of a conv/pool window over `input_shape`; errors as LayerErrors."""
    h, w, c = image_shape(layer, input_shape)
    effective = tuple(_args.effective_window(k, d) for k, d in zip(window, dilation))
    pads = config_error(layer, _args.as_padding, padding, layer, (h, w), effective, stride)
    config_error(layer, _args.check_fits, layer, (h, w), effective, pads,
                  "kernel" if out_channels else "window", dilated=out_channels is not None)
    ho, wo = (_args.output_size(n, f, s, p) for n, f, s, p in zip((h, w), effective, stride, pads))
    return (ho, wo, c if out_channels is None else out_channels)


def Conv2D(out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, use_bias=True,
           w_init=None, b_init=None, algorithm="auto") -> Layer:
    """2-D convolution; params `{"w": (kh, kw, C_in // groups, out_channels), "b": (out,)}`.

    `w_init` defaults to he_normal, `b_init` to zeros; `algorithm` as `ops.conv2d`."""
    name = "Conv2D"
    out_channels = _args.as_int(out_channels, name, "out_channels", minimum=1)
    kernel = _args.as_pair(kernel_size, name, "kernel_size")
    strides = _args.as_pair(stride, name, "stride")
    dilations = _args.as_pair(dilation, name, "dilation")
    groups = _args.as_int(groups, name, "groups", minimum=1)
    padding = _args.static(padding, name, "padding")  # numpy -> tuples; checked at init
    if out_channels % groups:
        raise ValueError(f"{name}: `groups` (={groups}) must divide `out_channels` "
                         f"(={out_channels}).")
    w_init = w_init or initializers.he_normal()
    b_init = b_init or initializers.zeros()

    def shape(input_shape):
        c = image_shape(name, input_shape)[2]
        if c % groups:
            raise LayerError(name, f"`groups` (={groups}) must divide the input channels "
                                   f"(={c}), got input shape {tuple(input_shape)}.")
        return _window_shape(name, input_shape, kernel, strides, padding, dilations,
                             out_channels)

    def init(key, input_shape):
        out = shape(input_shape)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (*kernel, input_shape[2] // groups, out_channels),
                              groups=groups)}
        if use_bias:
            params["b"] = b_init(k_b, (out_channels,))
        return params, out

    def apply(params, x, *, key=None, train=False):
        return ops.conv2d(x, params["w"], params.get("b"), stride=strides, padding=padding,
                          dilation=dilations, groups=groups, algorithm=algorithm)

    config = dict(out_channels=out_channels, kernel_size=kernel, stride=strides,
                  padding=padding, dilation=dilations, groups=groups, use_bias=use_bias)
    return make(name, config, shape, init, apply)


def _pool(name, op, window, stride, padding) -> Layer:
    """`op` names the fcnn.ops function, looked up at apply time (so the oracle can stand in)."""
    window = _args.as_pair(window, name, "window")
    strides = window if stride is None else _args.as_pair(stride, name, "stride")
    padding = _args.static(padding, name, "padding")  # numpy -> tuples; checked at init

    def shape(input_shape):
        return _window_shape(name, input_shape, window, strides, padding, (1, 1))

    def init(key, input_shape):
        return {}, shape(input_shape)

    def apply(params, x, *, key=None, train=False):
        return getattr(ops, op)(x, window, strides, padding)

    return make(name, dict(window=window, stride=strides, padding=padding), shape, init, apply)


def MaxPool2D(window, stride=None, padding=0) -> Layer:
    """Max pooling; `stride` defaults to `window`."""
    return _pool("MaxPool2D", "max_pool2d", window, stride, padding)


def AvgPool2D(window, stride=None, padding=0) -> Layer:
    """Average pooling (padded zeros count); `stride` defaults to `window`."""
    return _pool("AvgPool2D", "avg_pool2d", window, stride, padding)


def Dense(out_features, use_bias=True, w_init=None, b_init=None) -> Layer:
    """Fully connected; params `{"w": (in, out_features), "b": (out_features,)}`."""
    name = "Dense"
    out_features = _args.as_int(out_features, name, "out_features", minimum=1)
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
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (input_shape[0], out_features))}
        if use_bias:
            params["b"] = b_init(k_b, (out_features,))
        return params, out

    def apply(params, x, *, key=None, train=False):
        return ops.dense(x, params["w"], params.get("b"))

    return make(name, dict(out_features=out_features, use_bias=use_bias), shape, init, apply)


def _elementwise(name, op, **config) -> Layer:
    """`op` names the fcnn.ops function, called with the config, looked up at apply time."""
    def shape(input_shape):
        return as_shape(name, input_shape)

    def init(key, input_shape):
        return {}, shape(input_shape)

    def apply(params, x, *, key=None, train=False):
        return getattr(ops, op)(x, **config)

    return make(name, config, shape, init, apply)


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

    def apply(params, x, *, key=None, train=False):
        if not train:
            return x
        if key is None:
            raise ValueError(f"{name}: apply(..., train=True) needs a PRNG `key` "
                             "(e.g. key=jax.random.key(step)).")
        return ops.dropout(key, x, rate)

    return make(name, dict(rate=rate), shape, init, apply)


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

    def apply(params, x, *, key=None, train=False):
        xb, was_batched = batched(jnp.asarray(x), ndim, name)
        y = xb.reshape(xb.shape[0], -1)
        return y if was_batched else y[0]

    return make(name, dict(ndim=ndim), shape, init, apply)
