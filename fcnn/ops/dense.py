"""Fully connected layer ``x @ w + b`` with a hand-written rule built from itself."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from fcnn import _args
from fcnn.ops import _binding, _checks
from fcnn.ops._bias import bias_add, check_bias


def dense(x, w, b=None, *, precision=None):
    """Affine map over the last axis.

    Args:
      x: `(..., in_features)`.
      w: `(in_features, out_features)`.
      b: optional `(out_features,)`.
      precision: None (XLA's default on the platform), "default", "high" or "highest" (or a
        `jax.lax.Precision`), given to the product and to both of its gradients' products (as
        `conv2d`'s: on an NVIDIA GPU from Ampere on, float32 runs as TF32 unless "highest").

    Returns:
      `(..., out_features)`.

    Raises:
      ValueError: `w` not rank 2, `x` a scalar, feature mismatch, bias of the wrong length.
    """
    op = "dense"
    x = _checks.floating(op, "x", x)
    w = _checks.floating(op, "w", w)
    if w.ndim != 2:
        raise ValueError(
            f"dense: `w` must have rank 2 (in_features, out_features), got shape {tuple(w.shape)}."
        )
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"dense: `x` has {x.shape[-1] if x.ndim else 'no'} features (shape {tuple(x.shape)}) "
            f"but `w` expects {w.shape[0]} (w.shape[0]). Flatten the input first if it is an image."
        )
    x, w = _checks.same_dtype(x, w)
    y = _matmul(x, w, _args.as_precision(precision, op))
    if b is not None:
        b = check_bias(op, _checks.floating(op, "b", b), w.shape[1])
        y = bias_add(y, b.astype(y.dtype))
    return y


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _vjp_matmul(x, w, precision):
    return jnp.matmul(x, w, precision=precision)


def _matmul_fwd(x, w, precision):
    # through the op itself: reverse over reverse differentiates fwd (conv.py says why)
    return _vjp_matmul(x, w, precision), (x, w)


def _matmul_bwd(precision, res, g):
    """dx = g W^T; dW = X^T G with the leading axes of x and g flattened into rows.
    Both are matmuls, so second derivatives run through this rule too. Residuals: x, w."""
    x, w = res
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    return _vjp_matmul(g, w.T, precision), _vjp_matmul(x2.T, g2, precision)


_vjp_matmul.defvjp(_matmul_fwd, _matmul_bwd)

def _dense_primitives():
    """The primitives' module, imported when the op is first traced under the primitive binding
    (importing it registers the rules with JAX)."""
    from fcnn.ops import _dense_primitives

    return _dense_primitives


# `x @ w` bound by the current binding (`_binding`): the primitive of `_dense_primitives`, or
# the custom_vjp above; the same rule.
_matmul = _binding.bound(lambda *a: _dense_primitives().matmul(*a), _vjp_matmul)
