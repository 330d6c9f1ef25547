"""The dense layer's matrix product as a JAX primitive with hand-written JVP, transpose and
batching rules (the "primitive" binding; `fcnn.ops._binding`).

`matmul(a, b) = a @ b` with `a: (..., k)`, `b: (k, n)` is bilinear and closes under
transposition, so one primitive serves the forward and both gradients:

    JVP:        matmul(a', b) + matmul(a, b')
    transpose:  a <- matmul(ct, b^T),  b <- matmul(A^T, CT)   (A, CT: a, ct with rows flattened)

exactly the custom_vjp rule of fcnn.ops.dense (dx = g W^T, dW = X^T G).

Batching: an axis mapped over `a` alone is more rows. Mapped over `b` (members: an ensemble,
the tangents of a Jacobian) it becomes one primitive with `members=K`, a batched matrix product
(no grouped-convolution pathology to avoid here).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from fcnn.ops._bilinear import (
    bilinear_jvp,
    each,
    front,
    independent,
    register,
    shape_rule,
    zero_or,
)

matmul_p = Primitive("fcnn_matmul")  # (a, b; precision, members) -> a @ b


def matmul(a, b, precision=None, members=0):
    return matmul_p.bind(a, b, precision=precision, members=members)


def _compute(a, b, *, precision):
    return jnp.matmul(a, b, precision=precision)


register(matmul_p, each(_compute), shape_rule(lambda a, b, **_: (*a[:-1], b[-1])),
         ("precision", "members"))
ad.primitive_jvps[matmul_p] = bilinear_jvp(matmul_p.bind)


def _rows(a, members):
    """`a` as a matrix of rows (per member): (..., k) -> (M, k), or (K, M, k)."""
    return a.reshape(a.shape[0], -1, a.shape[-1]) if members else a.reshape(-1, a.shape[-1])


def _transpose(ct, a, b, *, precision, members):
    """<a @ b, ct> = <a, ct @ b^T> = <b, A^T @ CT>."""
    if ad.is_undefined_primal(a):
        return zero_or(ct, a, lambda: matmul(ct, jnp.swapaxes(b, -1, -2), precision,
                                             members)), None
    return None, zero_or(ct, b, lambda: matmul(jnp.swapaxes(_rows(a, members), -1, -2),
                                               _rows(ct, members), precision, members))


ad.primitive_transposes[matmul_p] = _transpose


def _batch(args, dims, *, precision, members):
    (a, b), (da, db) = args, dims
    if db is None and not members:  # more rows
        return matmul(front(a, da), b, precision), 0
    return independent(lambda a, b, m: matmul(a, b, precision, m), a, da, b, db, members,
                       unroll=False), 0


batching.primitive_batchers[matmul_p] = _batch
