"""Elementwise activations, each with its derivative written out (the activations of the CS231n
notes, "Neural Networks Part 1: Setting up the Architecture")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fcnn import _args
from fcnn.ops import _checks


def relu(x):
    """`max(0, x)`; the subgradient at 0 is 0 (the usual convention, as in `jax.nn.relu`)."""
    return _relu(_checks.floating("relu", "x", x))


def leaky_relu(x, negative_slope=0.01):
    """`x` for `x > 0`, else `negative_slope * x` (0.01 as in Maas, Hannun & Ng 2013; 0.1 is
    also common); slope at 0 is the slope.

    `negative_slope` is a finite float (Python or numpy scalar)."""
    x = _checks.floating("leaky_relu", "x", x)
    return _leaky_relu(x, _args.as_float(negative_slope, "leaky_relu", "negative_slope"))


def elu(x, alpha=1.0):
    """`x` for `x > 0`, else `alpha * (exp(x) - 1)`; derivative at 0 is `alpha` (a finite float)."""
    x = _checks.floating("elu", "x", x)
    return _elu(x, _args.as_float(alpha, "elu", "alpha"))


def sigmoid(x):
    """`1 / (1 + exp(-x))`, computed stably (`lax.logistic`)."""
    return _sigmoid(_checks.floating("sigmoid", "x", x))


def tanh(x):
    """Hyperbolic tangent."""
    return _tanh(_checks.floating("tanh", "x", x))


@jax.custom_vjp
def _relu(x):
    return jnp.where(x > 0, x, jnp.zeros((), x.dtype))


def _relu_fwd(x):
    y = _relu(x)
    return y, y


def _relu_bwd(y, g):
    """dx = g * 1[x > 0] = g * 1[y > 0]. Residual: the output y, not x. The layer after a ReLU
    (a pool, the next conv) saves y anyway; with x saved, XLA fused the computation of x (LeNet-5:
    conv1's `taps` forward + bias) into the backward fusion and recomputed it there (the LeNet-5
    step is faster with y; docs/performance.md, "Measured and rejected")."""
    return (jnp.where(y > 0, g, jnp.zeros((), g.dtype)),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def _leaky_impl(x, slope):
    return jnp.where(x > 0, x, x * jnp.asarray(slope, x.dtype))


_leaky_relu = jax.custom_vjp(_leaky_impl, nondiff_argnums=(1,))


def _leaky_fwd(x, slope):
    return _leaky_impl(x, slope), x


def _leaky_bwd(slope, x, g):
    """dx = g for x > 0, slope * g otherwise. Residual: x."""
    return (jnp.where(x > 0, g, g * jnp.asarray(slope, g.dtype)),)


_leaky_relu.defvjp(_leaky_fwd, _leaky_bwd)


def _elu_impl(x, alpha):
    return jnp.where(x > 0, x, jnp.asarray(alpha, x.dtype) * jnp.expm1(x))


_elu = jax.custom_vjp(_elu_impl, nondiff_argnums=(1,))


def _elu_fwd(x, alpha):
    return _elu_impl(x, alpha), x


def _elu_bwd(alpha, x, g):
    """dx = g for x > 0, g * alpha * exp(x) otherwise. Residual: x (exp of the negative part is
    recomputed; storing y would lose precision where y + alpha cancels)."""
    neg = jnp.asarray(alpha, x.dtype) * jnp.exp(jnp.minimum(x, 0))
    return (jnp.where(x > 0, g, g * neg),)


_elu.defvjp(_elu_fwd, _elu_bwd)


@jax.custom_vjp
def _sigmoid(x):
    return lax.logistic(x)


def _sigmoid_fwd(x):
    y = lax.logistic(x)
    return y, y


def _sigmoid_bwd(y, g):
    """dx = g * y * (1 - y). Residual: y."""
    return (g * y * (1 - y),)


_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


@jax.custom_vjp
def _tanh(x):
    return jnp.tanh(x)


def _tanh_fwd(x):
    y = jnp.tanh(x)
    return y, y


def _tanh_bwd(y, g):
    """dx = g * (1 - y^2). Residual: y."""
    return (g * (1 - y * y),)


_tanh.defvjp(_tanh_fwd, _tanh_bwd)
