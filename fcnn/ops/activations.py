"""Elementwise activations, each with its derivative written out (the activations of the CS231n
notes, "Neural Networks Part 1: Setting up the Architecture")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fcnn import _args
from fcnn.ops import _binding, _checks


def relu(x):
    """`max(0, x)`; the subgradient at 0 is 0 (the usual convention, as in `jax.nn.relu`).

    A NaN passes through with slope 1 (as in PyTorch); `relu(inf) = inf`, `relu(-inf) = 0`."""
    return _relu(_checks.floating("relu", "x", x))


def leaky_relu(x, negative_slope=0.01):
    """`x` for `x > 0`, else `negative_slope * x` (0.01 as in Maas, Hannun & Ng 2013; 0.1 is
    also common); slope at 0 is the slope; a NaN passes through with slope 1, as in `relu`.

    `negative_slope` is a finite float (Python or numpy scalar)."""
    x = _checks.floating("leaky_relu", "x", x)
    return _leaky_relu(x, (_args.as_float(negative_slope, "leaky_relu", "negative_slope"),))


def elu(x, alpha=1.0):
    """`x` for `x > 0`, else `alpha * (exp(x) - 1)`; derivative at 0 is `alpha` (a finite float);
    a NaN passes through with slope 1, as in `relu`; `elu(-inf) = -alpha`."""
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


# Non-finite inputs (docs/correctness.md, "NaN and infinities"): each piecewise activation tests
# `x <= 0` for its negative piece, so a NaN takes the identity piece: relu(nan) = nan with slope
# 1, like the max pool, where a NaN is its window's maximum; `x > 0` would send a NaN to the
# negative piece (relu(nan) = 0: the NaN hidden). relu(+inf) = +inf, relu(-inf) = 0.
#
# ReLU keeps y, not x: the layer after a ReLU (a pool, the next conv) saves y anyway; with x
# saved, XLA fused the computation of x (LeNet-5: conv1's `taps` forward + bias) into the
# backward fusion and recomputed it there (docs/performance.md, "Measured and rejected"). y <= 0
# exactly where x <= 0, and y is NaN where x is.
_relu = _elementwise(lambda x: jnp.where(x <= 0, _zero(x), x),
                     lambda x, y, t: jnp.where(y <= 0, _zero(t), t), saves="y")
# slope * t for x <= 0
_leaky_relu = _elementwise(lambda x, s: jnp.where(x <= 0, x * jnp.asarray(s, x.dtype), x),
                           lambda x, y, t, s: jnp.where(x <= 0, t * jnp.asarray(s, t.dtype), t),
                           saves="x")
# alpha * exp(x) * t for x <= 0; exp of the negative part is recomputed from x (storing y would
# lose precision where y + alpha cancels), and taken of x only where x <= 0 (0 elsewhere): at a
# large x or a NaN the factor of the unused piece would be inf or NaN, and the transposed
# select multiplies it by 0 (NaN)
def _negative(x):
    return jnp.where(x <= 0, x, _zero(x))


_elu = _elementwise(
    lambda x, a: jnp.where(x <= 0, jnp.asarray(a, x.dtype) * jnp.expm1(_negative(x)), x),
    lambda x, y, t, a: jnp.where(x <= 0, t * (jnp.asarray(a, x.dtype)
                                              * jnp.exp(_negative(x))), t),
    saves="x")
_sigmoid = _elementwise(lax.logistic, lambda x, y, t: t * y * (1 - y), saves="y")  # y (1 - y)
_tanh = _elementwise(jnp.tanh, lambda x, y, t: t * (1 - y * y), saves="y")  # 1 - y^2
