"""Elementwise activations, each with its derivative written out (the activations of the CS231n
notes, "Neural Networks Part 1: Setting up the Architecture")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fcnn import _args
from fcnn.ops import _binding, _checks


def relu(x):
    """`max(0, x)`; the subgradient at 0 is 0 (the usual convention, as in `jax.nn.relu`)."""
    return _relu(_checks.floating("relu", "x", x))


def leaky_relu(x, negative_slope=0.01):
    """`x` for `x > 0`, else `negative_slope * x` (0.01 as in Maas, Hannun & Ng 2013; 0.1 is
    also common); slope at 0 is the slope.

    `negative_slope` is a finite float (Python or numpy scalar)."""
    x = _checks.floating("leaky_relu", "x", x)
    return _leaky_relu(x, (_args.as_float(negative_slope, "leaky_relu", "negative_slope"),))


def elu(x, alpha=1.0):
    """`x` for `x > 0`, else `alpha * (exp(x) - 1)`; derivative at 0 is `alpha` (a finite float)."""
    x = _checks.floating("elu", "x", x)
    return _elu(x, (_args.as_float(alpha, "elu", "alpha"),))


def sigmoid(x):
    """`1 / (1 + exp(-x))`, computed stably (`lax.logistic`)."""
    return _sigmoid(_checks.floating("sigmoid", "x", x))


def tanh(x):
    """Hyperbolic tangent."""
    return _tanh(_checks.floating("tanh", "x", x))


# Each activation is `f(x, *params)` and the product of its (diagonal) Jacobian with a vector
# `t`, written from x and y = f(x): the same formula is the VJP (t = the upstream gradient) and
# the JVP (t = the tangent). `_elementwise` binds it both ways (fcnn.ops._binding): a
# custom_vjp for the "custom_vjp" binding; a custom_jvp for the "primitive" one, so forward mode
# runs the written JVP and reverse mode transposes it (an elementwise product).


def _elementwise(f, jacobian_times, saves):
    """`op(x, params)` for the current binding; `saves` ("x" or "y") is what the custom_vjp keeps
    for its backward (`jacobian_times` reads only that one)."""

    def vjp_fwd(x, params):
        y = f(x, *params)
        return y, (x if saves == "x" else y)

    def vjp_bwd(params, kept, g):
        x, y = (kept, None) if saves == "x" else (None, kept)
        return (jacobian_times(x, y, g, *params),)

    by_vjp = jax.custom_vjp(lambda x, params: f(x, *params), nondiff_argnums=(1,))
    by_vjp.defvjp(vjp_fwd, vjp_bwd)

    by_jvp = jax.custom_jvp(lambda x, params: f(x, *params), nondiff_argnums=(1,))

    @by_jvp.defjvp
    def _jvp(params, primals, tangents):
        (x,), (t,) = primals, tangents
        y = f(x, *params)
        return y, jacobian_times(x, y, t, *params)

    bound = _binding.bound(by_jvp, by_vjp)
    return lambda x, params=(): bound(x, params)


def _zero(a):
    return jnp.zeros((), a.dtype)


# ReLU keeps y, not x: the layer after a ReLU (a pool, the next conv) saves y anyway; with x
# saved, XLA fused the computation of x (LeNet-5: conv1's `taps` forward + bias) into the
# backward fusion and recomputed it there (docs/performance.md, "Measured and rejected").
_relu = _elementwise(lambda x: jnp.where(x > 0, x, _zero(x)),
                     lambda x, y, t: jnp.where(y > 0, t, _zero(t)), saves="y")
# slope * t for x <= 0
_leaky_relu = _elementwise(lambda x, s: jnp.where(x > 0, x, x * jnp.asarray(s, x.dtype)),
                           lambda x, y, t, s: jnp.where(x > 0, t, t * jnp.asarray(s, t.dtype)),
                           saves="x")
# alpha * exp(x) * t for x <= 0; exp of the negative part is recomputed from x (storing y would
# lose precision where y + alpha cancels)
_elu = _elementwise(
    lambda x, a: jnp.where(x > 0, x, jnp.asarray(a, x.dtype) * jnp.expm1(x)),
    lambda x, y, t, a: jnp.where(x > 0, t, t * (jnp.asarray(a, x.dtype)
                                                * jnp.exp(jnp.minimum(x, 0)))),
    saves="x")
_sigmoid = _elementwise(lax.logistic, lambda x, y, t: t * y * (1 - y), saves="y")  # y (1 - y)
_tanh = _elementwise(jnp.tanh, lambda x, y, t: t * (1 - y * y), saves="y")  # 1 - y^2
