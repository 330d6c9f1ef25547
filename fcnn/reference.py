"""The oracle: fcnn's op names built from plain ``lax``/``jnp`` with no custom rules.

Gradients of these come from JAX's own autodiff. The tests compare every hand-written rule in
``fcnn.ops`` against them, and ``fcnn.layers.with_ops(model, fcnn.reference)`` runs a whole model
on them. Argument handling is deliberately written separately from fcnn's
(padding strings go straight to ``lax``), so a normalisation bug cannot hide in both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
       3: ("NDHWC", "DHWIO", "NDHWC")}


def _pair(v, rank=2):
    return (v,) * rank if isinstance(v, int) else tuple(v)


def _pads(padding, rank=2):
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    if isinstance(padding[0], int):
        return tuple((p, p) for p in padding)
    return tuple(tuple(p) for p in padding)


def _batched(fn, x, *args, rank=2, **kwargs):
    if x.ndim == rank + 1:
        return fn(x[None], *args, **kwargs)[0]
    return fn(x, *args, **kwargs)


def _conv(rank, x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, activation=None,
          precision=None):
    if activation not in (None, "relu"):
        raise ValueError(f"conv{rank}d: `activation` must be None or 'relu', got "
                         f"{activation!r}.")

    def one(x, w, groups):
        return lax.conv_general_dilated(
            x, w, _pair(stride, rank), _pads(padding, rank),
            rhs_dilation=_pair(dilation, rank), dimension_numbers=_DN[rank],
            feature_group_count=groups, precision=precision)

    def f(x):
        if groups == 1 or x.dtype != jnp.float64:
            return one(x, w, groups)
        # in float64 one convolution per group: XLA:CPU's float64 grouped convolution lets a
        # NaN in one group reach every group's outputs (fcnn.ops.convolution.algorithms.grouped)
        cin, cout = x.shape[-1] // groups, w.shape[-1] // groups
        return jnp.concatenate([one(x[..., j * cin:(j + 1) * cin],
                                    w[..., j * cout:(j + 1) * cout], 1)
                                for j in range(groups)], axis=-1)

    def g(x):
        y = f(x)
        y = y if b is None else y + b.reshape((1,) * (rank + 1) + (-1,))
        return relu(y) if activation == "relu" else y

    return _batched(g, x, rank=rank)


def conv1d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, activation=None,
           precision=None):
    return _conv(1, x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                 activation=activation, precision=precision)


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, activation=None,
           precision=None):
    return _conv(2, x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                 activation=activation, precision=precision)


def conv3d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, activation=None,
           precision=None):
    return _conv(3, x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                 activation=activation, precision=precision)


def _grad_input(rank, g, w, input_shape, **kwargs):
    x = jnp.zeros(input_shape, g.dtype)
    _, vjp = jax.vjp(lambda x: _conv(rank, x, w, **kwargs), x)
    return vjp(g)[0]


def _grad_kernel(rank, x, g, kernel_shape, **kwargs):
    w = jnp.zeros(kernel_shape, x.dtype)
    _, vjp = jax.vjp(lambda w: _conv(rank, x, w, **kwargs), w)
    return vjp(g)[0]


def conv1d_grad_input(g, w, input_shape, *, stride=1, padding=0, dilation=1, groups=1):
    return _grad_input(1, g, w, input_shape, stride=stride, padding=padding,
                       dilation=dilation, groups=groups)


def conv2d_grad_input(g, w, input_shape, *, stride=1, padding=0, dilation=1, groups=1):
    return _grad_input(2, g, w, input_shape, stride=stride, padding=padding,
                       dilation=dilation, groups=groups)


def conv3d_grad_input(g, w, input_shape, *, stride=1, padding=0, dilation=1, groups=1):
    return _grad_input(3, g, w, input_shape, stride=stride, padding=padding,
                       dilation=dilation, groups=groups)


def conv1d_grad_kernel(x, g, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1):
    return _grad_kernel(1, x, g, kernel_shape, stride=stride, padding=padding,
                        dilation=dilation, groups=groups)


def conv2d_grad_kernel(x, g, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1):
    return _grad_kernel(2, x, g, kernel_shape, stride=stride, padding=padding,
                        dilation=dilation, groups=groups)


def conv3d_grad_kernel(x, g, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1):
    return _grad_kernel(3, x, g, kernel_shape, stride=stride, padding=padding,
                        dilation=dilation, groups=groups)


def _conv_transpose(rank, x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                    groups=1, precision=None):
    """`lax.conv_transpose` (padding stated on the dilated input: F_eff - 1 - p_low before,
    F_eff - 1 - p_high + output_padding after), one call per group."""
    stride, dilation = _pair(stride, rank), _pair(dilation, rank)
    extra = _pair(output_padding, rank)
    k = w.shape[:rank]
    pads = [((kk - 1) * d - lo, (kk - 1) * d - hi + e)
            for kk, d, (lo, hi), e in zip(k, dilation, _pads(padding, rank), extra)]

    def f(x):
        cin_g = x.shape[-1] // groups
        parts = [lax.conv_transpose(x[..., j * cin_g:(j + 1) * cin_g],
                                    w[..., j * cin_g:(j + 1) * cin_g], stride, pads,
                                    rhs_dilation=dilation, dimension_numbers=_DN[rank],
                                    transpose_kernel=True, precision=precision)
                 for j in range(groups)]
        y = jnp.concatenate(parts, axis=-1)
        return y if b is None else y + b.reshape((1,) * (rank + 1) + (-1,))

    return _batched(f, x, rank=rank)


def conv_transpose1d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, precision=None):
    return _conv_transpose(1, x, w, b, stride=stride, padding=padding,
                           output_padding=output_padding, dilation=dilation, groups=groups,
                           precision=precision)


def conv_transpose2d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, precision=None):
    return _conv_transpose(2, x, w, b, stride=stride, padding=padding,
                           output_padding=output_padding, dilation=dilation, groups=groups,
                           precision=precision)


def conv_transpose3d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, precision=None):
    return _conv_transpose(3, x, w, b, stride=stride, padding=padding,
                           output_padding=output_padding, dilation=dilation, groups=groups,
                           precision=precision)


def _geometry(x, window, stride, padding, rank):
    window = _pair(window, rank)
    stride = window if stride is None else _pair(stride, rank)
    pads = _pads(padding, rank)
    if isinstance(pads, str):
        pads = lax.padtype_to_pads(x.shape[1:-1], window, stride, pads)
    return window, stride, pads


def _window(x, init, op, window, stride, padding, rank=2):
    window, stride, pads = _geometry(x, window, stride, padding, rank)
    return lax.reduce_window(x, init, op, (1, *window, 1), (1, *stride, 1),
                             ((0, 0), *pads, (0, 0)))


def max_pool1d(x, window, stride=None, padding=0):
    return _batched(_max_by_argmax, x, window, stride, padding, 1, rank=1)


def max_pool2d(x, window, stride=None, padding=0):
    """Each window's first maximum in row-major order, a NaN counting as the largest value
    (`jnp.argmax`, as numpy's), gathered from the window's taps: autodiff sends the gradient
    there. (XLA's `reduce_window` max is no oracle here: its autodiff sends the gradient to the
    window's largest number, and on the CPU, fused into YNNPACK, its value is that number too.)"""
    return _batched(_max_by_argmax, x, window, stride, padding, 2)


def max_pool3d(x, window, stride=None, padding=0):
    return _batched(_max_by_argmax, x, window, stride, padding, 3, rank=3)


def _max_by_argmax(x, window, stride, padding, rank):
    import itertools

    window, stride, pads = _geometry(x, window, stride, padding, rank)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:-1], window, stride)]
    taps = jnp.stack([xp[(slice(None), *(slice(t, t + (o - 1) * s + 1, s)
                                         for t, o, s in zip(tap, out, stride)))]
                      for tap in itertools.product(*map(range, window))], axis=-1)
    first = jnp.argmax(taps, axis=-1)
    return jnp.take_along_axis(taps, first[..., None], axis=-1)[..., 0]


def _avg(x, window, stride, padding, rank):
    area = int(np.prod(_pair(window, rank)))
    return _batched(_window, x, 0.0, lax.add, window, stride, padding, rank, rank=rank) / area


def avg_pool1d(x, window, stride=None, padding=0):
    return _avg(x, window, stride, padding, 1)


def avg_pool2d(x, window, stride=None, padding=0):
    return _avg(x, window, stride, padding, 2)


def avg_pool3d(x, window, stride=None, padding=0):
    return _avg(x, window, stride, padding, 3)


def pad(x, padding, mode="zeros"):
    """`jnp.pad` of the spatial axes of (N, *spatial, C): "zeros" is its "constant", "reflect"
    its "reflect", "replicate" its "edge", "circular" its "wrap"."""
    rank = x.ndim - 2
    if isinstance(padding, int):
        padding = (padding,) * rank
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    np_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
               "circular": "wrap"}[mode]
    return jnp.pad(x, [(0, 0), *pads, (0, 0)], mode=np_mode)


def pixel_shuffle(x, factor):
    """PyTorch's order, written as NCHW-style index arithmetic over a gather: output cell
    (s_k·r + o_k), channel c reads input channel c·r^d + row-major(o)."""
    r, d = factor, x.ndim - 2
    c = x.shape[-1] // r ** d
    grids = jnp.meshgrid(*(jnp.arange(s * r) for s in x.shape[1:-1]), jnp.arange(c),
                         indexing="ij")
    *pos, ch = grids
    offset = 0
    for p in pos:
        offset = offset * r + p % r
    src = (slice(None), *(p // r for p in pos), ch * r ** d + offset)
    return x[src]


def pixel_unshuffle(x, factor):
    """The inverse permutation of `pixel_shuffle`, by the same index arithmetic."""
    r, d = factor, x.ndim - 2
    c = x.shape[-1]
    out_spatial = tuple(s // r for s in x.shape[1:-1])
    grids = jnp.meshgrid(*(jnp.arange(s) for s in out_spatial), jnp.arange(c * r ** d),
                         indexing="ij")
    *pos, ch = grids
    offset, rest = ch % r ** d, []
    for _ in range(d):
        rest.append(offset % r)
        offset = offset // r
    offsets = rest[::-1]
    src = (slice(None), *(p * r + o for p, o in zip(pos, offsets)), ch // r ** d)
    return x[src]


def adaptive_avg_pool(x, output_size):
    """Each output cell the mean of its bin [floor(i·n/m), ceil((i+1)·n/m)) per spatial axis,
    written as a loop of slices and `jnp.mean`."""
    rank = x.ndim - 2
    sizes = (output_size,) * rank if isinstance(output_size, int) else tuple(output_size)
    for axis, m in enumerate(sizes, start=1):
        n = x.shape[axis]
        if m is None or m == n:
            continue
        cells = [jnp.mean(lax.slice_in_dim(x, (i * n) // m, -((-(i + 1) * n) // m), axis=axis),
                          axis=axis, keepdims=True) for i in range(m)]
        x = jnp.concatenate(cells, axis=axis)
    return x


def upsample(x, scale=None, *, size=None, method="nearest", align_corners=None):
    """`torch.nn.functional.interpolate`'s coordinates, written per output index with `jnp`
    arithmetic and indexing (nearest: floor(i·c); linear: PyTorch's two-tap formula)."""
    rank = x.ndim - 2
    for axis in range(1, rank + 1):
        n = x.shape[axis]
        if size is not None:
            m = size if isinstance(size, int) else size[axis - 1]
            c = n / m
        else:
            f = scale if isinstance(scale, (int, float)) else scale[axis - 1]
            m, c = int(n * f // 1), 1.0 / f
        i = np.arange(m, dtype=np.float64)
        take = lambda idx: jnp.moveaxis(jnp.moveaxis(x, axis, 0)[idx], 0, axis)  # noqa: E731
        shape = [1] * x.ndim
        shape[axis] = m
        if method == "nearest":
            x = take(np.minimum(np.floor(i * c).astype(np.int64), n - 1))
            continue
        if align_corners:
            s = i * ((n - 1) / (m - 1)) if m > 1 else np.zeros(m)
        else:
            s = np.maximum((i + 0.5) * c - 0.5, 0.0)
        i0 = np.minimum(np.floor(s).astype(np.int64), n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        lam = jnp.asarray((s - i0).reshape(shape), x.dtype)
        x = (1 - lam) * take(i0) + lam * take(i1)
    return x


def dense(x, w, b=None, *, precision=None):
    y = jnp.matmul(x, w, precision=precision)
    return y if b is None else y + b.reshape((1,) * (y.ndim - 1) + b.shape)


def dropout(key, x, rate):
    if rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return x * (keep / (1.0 - rate)).astype(x.dtype)  # a product: a dropped NaN stays NaN


# The piecewise activations test `x <= 0` for the negative piece: a NaN takes the identity piece
# (value NaN, slope 1), fcnn's stated semantics (docs/correctness.md, "NaN and infinities").


def relu(x):
    return jnp.where(x <= 0, 0.0, x).astype(x.dtype)


def leaky_relu(x, negative_slope=0.01):
    return jnp.where(x <= 0, negative_slope * x, x)


def elu(x, alpha=1.0):
    # expm1 only of x <= 0: at x = +inf or NaN the unused piece's derivative would be 0 * inf
    # or 0 * NaN = NaN
    return jnp.where(x <= 0, alpha * jnp.expm1(jnp.where(x <= 0, x, 0.0)), x)


def sigmoid(x):
    # lax's logistic: 1 / (1 + exp(-x)) differentiated by autodiff is inf / inf = NaN at -inf
    return lax.logistic(x)


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
    m = relu(scores - correct + margin)
    m = jnp.where(jax.nn.one_hot(labels, scores.shape[-1], dtype=bool), 0.0, m)
    return jnp.mean(jnp.sum(m, axis=-1))


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    c = x.shape[-1]
    sq = jnp.pad(x * x, [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)])
    s = sum(sq[..., o: o + c] for o in range(size))
    return x / (k + alpha * s) ** beta


def batch_norm(x, gamma, beta, *, eps=1e-5, activation=None, residual=None):
    if activation not in (None, "relu"):
        raise ValueError(f"batch_norm: `activation` must be None or 'relu', got {activation!r}.")
    axes = tuple(range(x.ndim - 1))
    xc = x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x
    mean = jnp.mean(xc, axis=axes, keepdims=True)
    var = jnp.var(xc, axis=axes, keepdims=True)  # biased
    lift = (1,) * (x.ndim - 1) + (-1,)
    y = ((xc - mean) * lax.rsqrt(var + eps) * gamma.astype(xc.dtype).reshape(lift)
         + beta.astype(xc.dtype).reshape(lift))
    y = y if residual is None else y + residual.astype(y.dtype)
    y = relu(y) if activation == "relu" else y
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
