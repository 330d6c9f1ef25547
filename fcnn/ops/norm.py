"""Batch normalisation (Ioffe & Szegedy 2015) and group normalisation (Wu & He 2018), each with
its derivatives written out.

Both normalise `x` over a set R of axes, then scale and shift per channel:

    mu = mean_R x,   var = mean_R (x - mu)^2  (biased),   sigma = sqrt(var + eps)
    xhat = (x - mu) / sigma,   y = gamma * xhat + beta

Batch norm (training mode) takes R = every axis but the channels (N, H, W): statistics per
channel over the batch. Group norm takes R = the spatial axes and the C / G channels of a group,
per example: statistics per example and group.

Backward (g the upstream gradient, M = |R|, dxhat = g * gamma; dmu, dvar the cotangents of the
returned statistics):

    dx = (dxhat - mean_R dxhat - xhat * mean_R(dxhat * xhat)) / sigma + dmu / M
         + dvar * 2 (x - mu) / M
    dgamma = sum of g * xhat over every axis but the channels,   dbeta = sum of g likewise

For batch norm gamma is constant over R, so the first term is
(gamma / sigma)(g - mean_R g - xhat mean_R(g xhat)). Forward mode (t, tgamma, tbeta the
tangents):

    dmu = mean_R t,   dvar = 2 sigma mean_R(xhat t)
    dxhat = (t - mean_R t - xhat mean_R(xhat t)) / sigma
    dy = gamma dxhat + tgamma xhat + tbeta

Inference-mode batch norm is the affine map with given (running) statistics:
y = gamma (x - mean) / sigma + beta, sigma = sqrt(var + eps), whose derivatives are
dx = g gamma / sigma, dgamma = sum g xhat, dbeta = sum g, dmean = -sum g gamma / sigma,
dvar = -sum g gamma xhat / (2 sigma^2).

float16 and bfloat16 inputs are normalised in float32 (statistics accumulated in float32) and
`y` returned in the input's dtype; the statistics batch norm returns are float32 then.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fcnn import _args
from fcnn.ops import _binding, _checks


def batch_norm(x, gamma, beta, *, eps=1e-5, activation=None, residual=None):
    """Training-mode batch normalisation: normalise each channel by the batch's statistics;
    with `residual` and `activation="relu"`, `relu(batch_norm(...) + residual)` as one op (the
    end of a ResNet's basic block).

    Args:
      x: `(N, ..., C)` — NHWC images or `(N, C)` features; floating.
      gamma, beta: `(C,)` scale and shift.
      eps: a float > 0 added to the variance (1e-5, as PyTorch and Flax).
      activation: None (the identity) or "relu": y = relu(gamma xhat + beta), equal to
        `relu(batch_norm(...)[0])` value for value and in every derivative (ReLU's slope is 0
        at 0 and 1 at a NaN, as `fcnn.ops.relu`'s).
      residual: None or an array of x's shape added before the activation:
        y = act(gamma xhat + beta + residual).

    Returns:
      `(y, mean, var)`: y like x; the batch's per-channel mean and *biased* variance, `(C,)`,
      over every axis but the last (a layer's running statistics are updated from them; the
      unbiased variance is `var * M / (M - 1)` with M = x.size // C). Gradients flow through
      all three.

    Under the primitive binding the op and its tangent and cotangent maps are primitives of
    their own (`fcnn.ops._batch_norm`): on a CPU with the native kernels the forward is one
    call (statistics in double, then one pass that normalises, scales, shifts, adds the
    residual and applies the ReLU) and so is the backward (its sums, then dx and the residual's
    gradient, the ReLU's mask read from y); elsewhere the same maths by XLA.
    """
    op = "batch_norm"
    x, gamma, beta = _operands(op, x, gamma, beta)
    eps = _args.as_float(eps, op, "eps", above=0)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: `activation` must be one of {_ACTIVATIONS}, got "
                         f"{activation!r}.")
    relu = activation == "relu"
    if residual is not None:
        residual = _checks.floating(op, "residual", residual)
        if residual.shape != x.shape:
            raise ValueError(f"{op}: `residual` must have x's shape {tuple(x.shape)}, got "
                             f"{tuple(residual.shape)}.")
        residual = residual.astype(x.dtype)
    if _binding.binding() == "primitive":
        from fcnn.ops import _batch_norm

        return _batch_norm.batch_norm(x, gamma, beta, residual, eps, relu)
    axes = tuple(range(x.ndim - 1))
    y, mean, var = _norm(x, gamma, beta, (axes, eps))
    y = y if residual is None else y + residual
    if relu:
        from fcnn.ops.activations import relu as _relu

        y = _relu(y)
    c = x.shape[-1]
    return y, mean.reshape(c), var.reshape(c)


_ACTIVATIONS = (None, "relu")


def batch_norm_inference(x, gamma, beta, mean, var, *, eps=1e-5):
    """Inference-mode batch normalisation: the affine map `gamma (x - mean) / sqrt(var + eps)
    + beta` with given (running) per-channel statistics `mean`, `var` of shape `(C,)`."""
    op = "batch_norm_inference"
    x, gamma, beta = _operands(op, x, gamma, beta)
    c = x.shape[-1]
    mean = _per_channel(op, "mean", mean, c)
    var = _per_channel(op, "var", var, c)
    eps = _args.as_float(eps, op, "eps", above=0)
    return _affine(x, gamma, beta, mean, var, (eps,))


def group_norm(x, gamma, beta, groups, *, eps=1e-5):
    """Group normalisation: each example's channels in `groups` groups, each group normalised
    over its channels and the spatial axes; then scaled and shifted per channel. No statistic
    crosses examples, so per-example gradients and DP-SGD work with it.

    Args:
      x: `(N, ..., C)` with C divisible by `groups`; floating.
      gamma, beta: `(C,)`.
      groups: an int >= 1 dividing C (1: layer norm over H, W, C; C: instance norm).
      eps: a float > 0.

    Returns:
      y, like x.
    """
    op = "group_norm"
    x, gamma, beta = _operands(op, x, gamma, beta)
    groups = _args.as_int(groups, op, "groups", minimum=1)
    c = x.shape[-1]
    if c % groups:
        raise ValueError(f"{op}: `groups` ({groups}) must divide the {c} channels of x.")
    eps = _args.as_float(eps, op, "eps", above=0)
    xr = x.reshape(*x.shape[:-1], groups, c // groups)
    axes = (*range(1, x.ndim - 1), x.ndim)  # the spatial axes and the group's channels
    shape = (groups, c // groups)
    y, _, _ = _norm(xr, gamma.reshape(shape), beta.reshape(shape), (axes, eps))
    return y.reshape(x.shape)


def _operands(op, x, gamma, beta):
    x = _checks.floating(op, "x", x)
    if x.ndim < 2:
        raise ValueError(f"{op}: `x` must have a batch axis and a channel axis, (N, ..., C); "
                         f"got shape {tuple(x.shape)}.")
    c = x.shape[-1]
    return x, _per_channel(op, "gamma", gamma, c), _per_channel(op, "beta", beta, c)


def _per_channel(op, name, a, c):
    a = _checks.floating(op, name, a)
    if a.shape != (c,):
        raise ValueError(f"{op}: `{name}` must have shape ({c},) (one per channel of x), got "
                         f"{tuple(a.shape)}.")
    return a


def _compute_dtype(dtype):
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _lift(a, ndim):
    """`a` with leading axes of size 1 up to `ndim` (explicit broadcasting)."""
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def _sum_to(a, shape):
    """`a` summed over its leading axes and the axes where `shape` (right-aligned) has 1."""
    lead = a.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1)
    return jnp.sum(a, axis=axes).reshape(shape)


# ----------------------------------------------------------------------------- normalisation
# `_norm(x, gamma, beta, (axes, eps)) -> (y, mu, var)` with mu and var kept as broadcastable
# (size-1 axes in R) and gamma, beta broadcasting against x's trailing axes.


def _stats(x, axes):
    mu = _mean(x, axes)
    return mu, _mean(jnp.square(x - mu), axes)


def _norm_value(x, gamma, beta, cfg):
    axes, eps = cfg
    xc = x.astype(_compute_dtype(x.dtype))
    mu, var = _stats(xc, axes)
    sigma = jnp.sqrt(var + eps)
    xhat = (xc - mu) / sigma
    y = _lift(gamma, x.ndim).astype(xc.dtype) * xhat + _lift(beta, x.ndim).astype(xc.dtype)
    return y.astype(x.dtype), mu, var, xhat, sigma


def _mean(a, axes):
    return jnp.mean(a, axis=axes, keepdims=True)


def _vjp_norm_fwd(x, gamma, beta, cfg):
    y, mu, var, xhat, sigma = _norm_value(x, gamma, beta, cfg)
    return (y, mu, var), (xhat, sigma, gamma)


def _vjp_norm_bwd(cfg, res, cts):
    axes, _ = cfg
    xhat, sigma, gamma = res
    g, dmu, dvar = cts
    x_dtype, g = g.dtype, g.astype(xhat.dtype)  # y, hence its cotangent, has x's dtype
    m = math.prod(xhat.shape[a] for a in axes)
    dxhat = g * _lift(gamma, g.ndim).astype(g.dtype)
    dx = (dxhat - _mean(dxhat, axes) - xhat * _mean(dxhat * xhat, axes)) / sigma
    dx = dx + dmu / m + dvar * (2 / m) * xhat * sigma
    return (dx.astype(x_dtype), _sum_to(g * xhat, gamma.shape).astype(gamma.dtype),
            _sum_to(g, gamma.shape).astype(gamma.dtype))


_vjp_norm = jax.custom_vjp(lambda x, gamma, beta, cfg: _norm_value(x, gamma, beta, cfg)[:3],
                           nondiff_argnums=(3,))
_vjp_norm.defvjp(_vjp_norm_fwd, _vjp_norm_bwd)

_jvp_norm = jax.custom_jvp(lambda x, gamma, beta, cfg: _norm_value(x, gamma, beta, cfg)[:3],
                           nondiff_argnums=(3,))


@_jvp_norm.defjvp
def _norm_jvp(cfg, primals, tangents):
    """dmu = mean t, dvar = 2 sigma mean(xhat t), dxhat = (t - mean t - xhat mean(xhat t)) /
    sigma, dy = gamma dxhat + tgamma xhat + tbeta: linear in the tangents; reverse mode
    transposes it into the backward above."""
    axes, _ = cfg
    x, gamma, beta = primals
    t, tgamma, tbeta = tangents
    y, mu, var, xhat, sigma = _norm_value(x, gamma, beta, cfg)
    t = t.astype(xhat.dtype)
    mean_t, mean_xt = _mean(t, axes), _mean(xhat * t, axes)
    dxhat = (t - mean_t - xhat * mean_xt) / sigma
    n = t.ndim
    dy = (_lift(gamma, n).astype(t.dtype) * dxhat + _lift(tgamma, n).astype(t.dtype) * xhat
          + _lift(tbeta, n).astype(t.dtype))
    return (y, mu, var), (dy.astype(y.dtype), mean_t, 2 * sigma * mean_xt)


# ----------------------------------------------------------------------------- inference


def _affine_value(x, gamma, beta, mean, var, cfg):
    (eps,) = cfg
    cd, n = _compute_dtype(x.dtype), x.ndim
    sigma = jnp.sqrt(_lift(var, n).astype(cd) + eps)
    xhat = (x.astype(cd) - _lift(mean, n).astype(cd)) / sigma
    y = _lift(gamma, n).astype(cd) * xhat + _lift(beta, n).astype(cd)
    return y.astype(x.dtype), xhat, sigma


def _vjp_affine_fwd(x, gamma, beta, mean, var, cfg):
    y, xhat, sigma = _affine_value(x, gamma, beta, mean, var, cfg)
    return y, (xhat, sigma, gamma, mean, var)


def _vjp_affine_bwd(cfg, res, g):
    xhat, sigma, gamma, mean, var = res
    x_dtype, g = g.dtype, g.astype(xhat.dtype)
    scaled = g * _lift(gamma, g.ndim).astype(g.dtype) / sigma  # dx
    c = (gamma.shape[0],)
    return (scaled.astype(x_dtype), _sum_to(g * xhat, c).astype(gamma.dtype),
            _sum_to(g, c).astype(gamma.dtype), (-_sum_to(scaled, c)).astype(mean.dtype),
            (-_sum_to(scaled * xhat / (2 * sigma), c)).astype(var.dtype))


_vjp_affine = jax.custom_vjp(lambda x, gamma, beta, mean, var, cfg:
                             _affine_value(x, gamma, beta, mean, var, cfg)[0],
                             nondiff_argnums=(5,))
_vjp_affine.defvjp(_vjp_affine_fwd, _vjp_affine_bwd)

_jvp_affine = jax.custom_jvp(lambda x, gamma, beta, mean, var, cfg:
                             _affine_value(x, gamma, beta, mean, var, cfg)[0],
                             nondiff_argnums=(5,))


@_jvp_affine.defjvp
def _affine_jvp(cfg, primals, tangents):
    """dy = (gamma / sigma)(t - tmean) + tgamma xhat + tbeta - gamma xhat tvar / (2 sigma^2)."""
    x, gamma, beta, mean, var = primals
    n, cd = x.ndim, _compute_dtype(x.dtype)
    t, tgamma, tbeta, tmean, tvar = (_lift(a, n).astype(cd) for a in tangents)
    y, xhat, sigma = _affine_value(x, gamma, beta, mean, var, cfg)
    gam = _lift(gamma, n).astype(cd)
    # sigma^2 as var + eps, not sigma**2: at var = inf the derivative of the square of
    # sqrt(var + eps) is inf * 0 = NaN, where that of var + eps is 1
    var_eps = _lift(var, n).astype(cd) + cfg[0]
    dy = gam / sigma * (t - tmean) + tgamma * xhat + tbeta - gam * xhat * tvar / (2 * var_eps)
    return y, dy.astype(y.dtype)


# Bound by the current binding (`_binding`): the custom_vjp functions above, or the custom_jvp
# ones with their JVP written out, which reverse mode transposes.
_norm = _binding.bound(_jvp_norm, _vjp_norm)
_affine = _binding.bound(_jvp_affine, _vjp_affine)
