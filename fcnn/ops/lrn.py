"""Local response normalisation across channels (AlexNet's NORM layers), hand-written rule.

    y_c = x_c * d_c^(-beta),   d_c = k + alpha * S_c,   S_c = sum_{c' in W(c)} x_{c'}^2

with W(c) the `size` channels centred on c (for even sizes one more before than after), zero
beyond the edges; alpha is *not* divided by `size` (Krizhevsky et al. 2012; PyTorch's
LocalResponseNorm uses alpha / size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fcnn import _args
from fcnn.ops import _binding, _checks


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Normalise each activation by the energy of its `size` neighbouring channels.

    Args:
      x: `(..., C)` (NHWC or HWC), floating.
      size: channels in the window, an int >= 1; AlexNet uses 5.
      alpha, beta, k: finite floats, AlexNet's 1e-4, 0.75, 2; `alpha >= 0` and `k > 0`, so the
        denominator `k + alpha * S_c` is positive (otherwise `d^-beta` can be inf or NaN).

    Returns:
      An array like `x`.
    """
    op = "local_response_norm"
    x = _checks.floating(op, "x", x)
    cfg = config(op, size, alpha, beta, k)
    if x.ndim < 1:
        raise ValueError(f"{op}: `x` needs a channel axis, got a scalar.")
    return _lrn(x, cfg)


def config(op, size, alpha, beta, k) -> tuple[int, float, float, float]:
    """`(size, alpha, beta, k)` validated (see `local_response_norm`); the layer's check too."""
    return (_args.as_int(size, op, "size", minimum=1),
            _args.as_float(alpha, op, "alpha", minimum=0),
            _args.as_float(beta, op, "beta"),
            _args.as_float(k, op, "k", above=0))


def _window_sum(v, before, after):
    """sum_{o=-before..after} v[..., c + o], zero beyond the edges."""
    c = v.shape[-1]
    padded = lax.pad(v, jnp.array(0, v.dtype), [(0, 0, 0)] * (v.ndim - 1) + [(before, after, 0)])
    axis = v.ndim - 1
    return sum(lax.slice_in_dim(padded, o, o + c, axis=axis) for o in range(before + after + 1))


def _bounds(size):
    return size // 2, (size - 1) // 2  # channels before, after


def _denominator(x, cfg):
    size, alpha, _, k = cfg
    before, after = _bounds(size)
    return k + alpha * _window_sum(x * x, before, after)


def _lrn_value(x, cfg):
    return x * _denominator(x, cfg) ** -cfg[2]


_vjp_lrn = jax.custom_vjp(_lrn_value, nondiff_argnums=(1,))


def _lrn_fwd(x, cfg):
    d = _denominator(x, cfg)
    return x * d ** -cfg[2], (x, d)


def _lrn_bwd(cfg, res, g):
    """dx_j = g_j d_j^-beta - 2 alpha beta x_j sum_{c : j in W(c)} g_c x_c d_c^(-beta-1).

    The sum over the windows containing j is the adjoint window sum (before/after swapped).
    Residuals: x and d."""
    size, alpha, beta, _ = cfg
    x, d = res
    before, after = _bounds(size)
    spread = _window_sum(g * x * d ** (-beta - 1), after, before)
    return (g * d**-beta - 2 * alpha * beta * x * spread,)


_vjp_lrn.defvjp(_lrn_fwd, _lrn_bwd)

_jvp_lrn = jax.custom_jvp(_lrn_value, nondiff_argnums=(1,))


@_jvp_lrn.defjvp
def _lrn_jvp(cfg, primals, tangents):
    """dy = dx d^-beta - beta x d^(-beta-1) dd, with dd = 2 alpha W(x dx) (W: the window sum
    over channels): linear in dx; its transpose is the backward above."""
    size, alpha, beta, _ = cfg
    (x,), (t,) = primals, tangents
    d = _denominator(x, cfg)
    before, after = _bounds(size)
    dd = 2 * alpha * _window_sum(x * t, before, after)
    return x * d ** -beta, t * d ** -beta - beta * x * d ** (-beta - 1) * dd


# Bound by the current binding (`_binding`): the custom_vjp above, or a custom_jvp with the JVP
# written out (`_lrn_jvp`), which reverse mode transposes.
_lrn = _binding.bound(_jvp_lrn, _vjp_lrn)
