"""The oracle: fcnn's op names built from plain ``lax``/``jnp`` with no custom rules.

Gradients of these come from JAX's own autodiff. The tests compare every hand-written rule in
``fcnn.ops`` against them, and ``fcnn.layers.with_ops(model, fcnn.reference)`` runs a whole model
on them. Argument handling is deliberately written separately from fcnn's
(padding strings go straight to ``lax``), so a normalisation bug cannot hide in both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding):
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


def _batched(fn, x, *args, **kwargs):
    if x.ndim == 3:
        return fn(x[None], *args, **kwargs)[0]
    return fn(x, *args, **kwargs)


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    def f(x):
        y = lax.conv_general_dilated(
            x, w, _pair(stride), _pads(padding), rhs_dilation=_pair(dilation),
            dimension_numbers=_DN, feature_group_count=groups,
        )
        return y if b is None else y + b.reshape(1, 1, 1, -1)

    return _batched(f, x)


def conv2d_grad_input(g, w, input_shape, *, stride=1, padding=0, dilation=1, groups=1):
    x = jnp.zeros(input_shape, g.dtype)
    _, vjp = jax.vjp(
        lambda x: conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups),
        x,
    )
    return vjp(g)[0]


def conv2d_grad_kernel(x, g, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1):
    w = jnp.zeros(kernel_shape, x.dtype)
    _, vjp = jax.vjp(
        lambda w: conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups),
        w,
    )
    return vjp(g)[0]


def _window(x, init, op, window, stride, padding):
    window = _pair(window)
    stride = window if stride is None else _pair(stride)
    pads = _pads(padding)
    if isinstance(pads, str):
        pads = lax.padtype_to_pads(x.shape[1:3], window, stride, pads)
    return lax.reduce_window(
        x, init, op, (1, *window, 1), (1, *stride, 1),
        ((0, 0), *pads, (0, 0)),
    )


def max_pool2d(x, window, stride=None, padding=0):
    return _batched(_window, x, -jnp.inf, lax.max, window, stride, padding)


def avg_pool2d(x, window, stride=None, padding=0):
    kh, kw = _pair(window)
    return _batched(_window, x, 0.0, lax.add, window, stride, padding) / (kh * kw)


def dense(x, w, b=None):
    y = x @ w
    return y if b is None else y + b.reshape((1,) * (y.ndim - 1) + b.shape)


def dropout(key, x, rate):
    if rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def relu(x):
    return jnp.where(x > 0, x, 0.0).astype(x.dtype)


def leaky_relu(x, negative_slope=0.01):
    return jnp.where(x > 0, x, negative_slope * x)


def elu(x, alpha=1.0):
    return jnp.where(x > 0, x, alpha * jnp.expm1(x))


def sigmoid(x):
    return 1 / (1 + jnp.exp(-x))


def tanh(x):
    return jnp.tanh(x)


def softmax_cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        picked = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
        return -jnp.mean(picked)
    return -jnp.mean(jnp.sum(labels * logp, axis=-1))


def mse(pred, target):
    return jnp.mean((pred - target) ** 2)


def hinge(scores, labels, margin=1.0):
    correct = jnp.take_along_axis(scores, labels[..., None], axis=-1)
    m = jnp.maximum(scores - correct + margin, 0.0)
    m = jnp.where(jax.nn.one_hot(labels, scores.shape[-1], dtype=bool), 0.0, m)
    return jnp.mean(jnp.sum(m, axis=-1))


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    c = x.shape[-1]
    sq = jnp.pad(x * x, [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)])
    s = sum(sq[..., o: o + c] for o in range(size))
    return x / (k + alpha * s) ** beta


def batch_norm(x, gamma, beta, *, eps=1e-5):
    axes = tuple(range(x.ndim - 1))
    xc = x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x
    mean = jnp.mean(xc, axis=axes, keepdims=True)
    var = jnp.var(xc, axis=axes, keepdims=True)  # biased
    lift = (1,) * (x.ndim - 1) + (-1,)
    y = ((xc - mean) * lax.rsqrt(var + eps) * gamma.astype(xc.dtype).reshape(lift)
         + beta.astype(xc.dtype).reshape(lift))
    return y.astype(x.dtype), mean.reshape(-1), var.reshape(-1)


def batch_norm_inference(x, gamma, beta, mean, var, *, eps=1e-5):
    xc = x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x
    lift = (1,) * (x.ndim - 1) + (-1,)
    gamma, beta, mean, var = (a.reshape(lift) for a in (gamma, beta, mean, var))
    y = gamma * (xc - mean) / jnp.sqrt(var + eps) + beta
    return y.astype(x.dtype)


def group_norm(x, gamma, beta, groups, *, eps=1e-5):
    n, c = x.shape[0], x.shape[-1]
    xc = x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x
    xg = xc.reshape(n, -1, groups, c // groups)  # (N, spatial, G, C/G)
    mean = jnp.mean(xg, axis=(1, 3), keepdims=True)
    var = jnp.var(xg, axis=(1, 3), keepdims=True)
    lift = (1,) * (x.ndim - 1) + (-1,)
    y = (((xg - mean) / jnp.sqrt(var + eps)).reshape(xc.shape) * gamma.reshape(lift)
         + beta.reshape(lift))
    return y.astype(x.dtype)
