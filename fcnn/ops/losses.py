"""Losses, each a scalar mean over the batch with its gradient written out (CS231n notes, "Linear
Classification": the softmax and multiclass SVM losses)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _args
from fcnn.ops import _binding, _checks


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy, computed stably through log-sum-exp.

    Args:
      logits: `(N, K)` (or `(..., K)`; `(K,)` for one example).
      labels: integer class indices in `[0, K)` of shape `(N,)` (the leading shape of
        `logits`), or probability targets of the same shape as `logits` (soft labels, e.g.
        label smoothing).

    Returns:
      Scalar `mean_n [logsumexp(z_n) - sum_k t_nk z_nk]`.
      Gradient: `(softmax(z) - onehot(y)) / N` (the softmax classifier's `p - y`).

    Raises:
      ValueError: shapes that do not match, or concrete integer labels outside `[0, K)`.
      TypeError: non-floating logits, labels neither integer nor floating.

    Labels traced under `jit` (or `vmap`) have no values at trace time, so they cannot be
    checked there: an example whose label is outside `[0, K)` makes its term of the loss NaN and
    its row of the gradient NaN (hence the loss and the parameters after an update), instead of
    a silently wrong finite value; valid labels cost one compare and select per example, no
    host callback. To have the run stop there, wrap the step in
    `jax.experimental.checkify.checkify(..., errors=checkify.float_checks)`.
    """
    op = "softmax_cross_entropy"
    logits = _checks.floating(op, "logits", logits)
    raw, labels = labels, jnp.asarray(labels)
    if logits.ndim < 1:
        raise ValueError(f"{op}: `logits` must have a class axis (..., K), got a scalar.")
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"{op}: integer `labels` must have shape {tuple(logits.shape[:-1])} (the batch "
                f"shape of `logits` {tuple(logits.shape)}), got {tuple(labels.shape)}."
            )
        _check_classes(op, raw, logits.shape[-1], "logits")
        return _xent_int(logits, labels)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        if labels.shape != logits.shape:
            raise ValueError(
                f"{op}: probability `labels` must have the shape of `logits` "
                f"{tuple(logits.shape)}, got {tuple(labels.shape)}."
            )
        logits, labels = _checks.same_dtype(logits, labels)
        return _xent_soft(logits, labels)
    raise TypeError(f"{op}: `labels` must be integer or floating, got dtype {labels.dtype}.")


def mse(pred, target):
    """Mean squared error over every element: `mean((pred - target)^2)`.

    Args:
      pred, target: floating arrays of the same shape (no broadcasting).
    """
    pred = _checks.floating("mse", "pred", pred)
    target = _checks.floating("mse", "target", target)
    if pred.shape != target.shape:
        raise ValueError(
            f"mse: `pred` and `target` must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    return _mse(*_checks.same_dtype(pred, target))


def hinge(scores, labels, margin=1.0):
    """Multiclass hinge (SVM) loss: `mean_n sum_{j != y_n} max(0, s_nj - s_ny + margin)`.

    Args:
      scores: `(N, K)` (or `(..., K)`).
      labels: integer class indices in `[0, K)`, `(N,)`, the leading shape of `scores`.
      margin: a finite float, Python or numpy scalar (CS231n's delta).

    Raises:
      ValueError: shapes that do not match, or concrete labels outside `[0, K)`.
      TypeError: non-floating scores, non-integer labels, a margin that is not a float.

    Under `jit` out-of-range labels give NaN terms and NaN gradient rows, as in
    `softmax_cross_entropy`.
    """
    op = "hinge"
    scores = _checks.floating(op, "scores", scores)
    raw, labels = labels, jnp.asarray(labels)
    if scores.ndim < 1:
        raise ValueError(f"{op}: `scores` must have a class axis (..., K), got a scalar.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{op}: `labels` must be integer class indices, got dtype {labels.dtype}.")
    if labels.shape != scores.shape[:-1]:
        raise ValueError(
            f"{op}: `labels` must have shape {tuple(scores.shape[:-1])} (the batch shape of "
            f"`scores` {tuple(scores.shape)}), got {tuple(labels.shape)}."
        )
    margin = _args.as_float(margin, op, "margin")
    _check_classes(op, raw, scores.shape[-1], "scores")
    return _hinge(scores, labels, margin)


def _check_classes(op, labels, k, against):
    """Refuse concrete integer labels outside [0, k), naming a few; a traced array has no
    values until it runs (its out-of-range rows come out NaN in the rules below)."""
    if isinstance(labels, jax.core.Tracer):
        return
    values = np.asarray(labels)
    bad = np.argwhere((values < 0) | (values >= k))
    if len(bad) == 0:
        return
    shown = ", ".join(
        f"labels[{', '.join(map(str, i))}] = {values[tuple(i)]}" if values.ndim else str(values)
        for i in bad[:3]
    )
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    raise ValueError(
        f"{op}: integer `labels` must be class indices in [0, {k}) (`{against}` has {k} "
        f"classes), got {shown}{more}."
    )


def _out_of_range(labels, k):
    return (labels < 0) | (labels >= k)


def _count(a):
    return max(1, a.size // a.shape[-1]) if a.ndim else 1


def _log_softmax(z):
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    shifted = z - m
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _onehot(labels, k, dtype):
    classes = jnp.arange(k).reshape((1,) * labels.ndim + (k,))
    return (labels[..., None] == classes).astype(dtype)


# Each loss is a scalar `value(*args)` with its gradient `gradient(*args)` (one array per
# differentiable argument, `None` for the labels) written out. `_loss` binds them both ways
# (fcnn.ops._binding): the VJP is `g * gradient` (custom_vjp binding); the JVP is the inner
# product `sum(gradient * tangent)` (custom_jvp, the primitive binding), which reverse mode
# transposes back to `g * gradient`.


def _loss(value, gradient, nondiff=()):
    """`op(*args)` for the current binding; `nondiff`: positions of static arguments."""
    by_vjp = jax.custom_vjp(value, nondiff_argnums=nondiff)
    by_jvp = jax.custom_jvp(value, nondiff_argnums=nondiff)

    def split(args):
        static = tuple(args[i] for i in nondiff)
        return static, tuple(a for i, a in enumerate(args) if i not in nondiff)

    def full(static, arrays):
        it_s, it_a = iter(static), iter(arrays)
        return tuple(next(it_s) if i in nondiff else next(it_a)
                     for i in range(len(static) + len(arrays)))

    def fwd(*args):
        return value(*args), split(args)[1]

    def bwd(*rest):
        static, (arrays, g) = rest[:len(nondiff)], rest[len(nondiff):]
        return tuple(None if d is None else g * d for d in gradient(*full(static, arrays)))

    by_vjp.defvjp(fwd, bwd)

    def jvp(*rest):
        static, (primals, tangents) = rest[:len(nondiff)], rest[len(nondiff):]
        args = full(static, primals)
        terms = [jnp.sum(d * t) for d, t in zip(gradient(*args), tangents) if d is not None]
        return value(*args), sum(terms[1:], terms[0])

    by_jvp.defjvp(jvp)
    return _binding.bound(by_jvp, by_vjp)


def _xent_int_value(z, labels):
    logp = _log_softmax(z)
    # a select, not a product with the one-hot: a -inf logit of another class (a masked class)
    # times 0 would make the term NaN
    picked = jnp.sum(jnp.where(_onehot(labels, z.shape[-1], jnp.bool_), logp, 0), axis=-1)
    picked = jnp.where(_out_of_range(labels, z.shape[-1]), jnp.nan, picked)
    return -jnp.sum(picked) / _count(z)


def _xent_int_gradient(z, labels):
    """dz = (softmax(z) - onehot(y)) / N, NaN on the rows of out-of-range labels (their term is
    NaN); integer labels get no gradient."""
    p = jnp.exp(_log_softmax(z))
    dz = jnp.where(_out_of_range(labels, z.shape[-1])[..., None], jnp.nan,
                   p - _onehot(labels, z.shape[-1], z.dtype))
    return dz / _count(z), None


_xent_int = _loss(_xent_int_value, _xent_int_gradient)


def _xent_soft_value(z, t):
    return -jnp.sum(t * _log_softmax(z)) / _count(z)


def _xent_soft_gradient(z, t):
    """dz = (softmax(z) * sum_k t_k - t) / N; dt = -log_softmax(z) / N."""
    logp = _log_softmax(z)
    n = _count(z)
    return (jnp.exp(logp) * jnp.sum(t, axis=-1, keepdims=True) - t) / n, -logp / n


_xent_soft = _loss(_xent_soft_value, _xent_soft_gradient)


def _mse_gradient(p, t):
    """d pred = 2 (pred - target) / size; d target = -d pred."""
    d = 2 * (p - t) / max(p.size, 1)
    return d, -d


_mse = _loss(lambda p, t: jnp.mean(jnp.square(p - t)), _mse_gradient)


def _margins(s, labels, margin):
    correct = jnp.take_along_axis(s, labels[..., None], axis=-1)
    m = s - correct + jnp.asarray(margin, s.dtype)
    return m, _onehot(labels, s.shape[-1], jnp.bool_)


def _hinge_value(s, labels, margin):
    m, is_y = _margins(s, labels, margin)
    rows = jnp.sum(jnp.where(is_y | (m <= 0), 0, m), axis=-1)  # a NaN margin counts, as NaN
    return jnp.sum(jnp.where(_out_of_range(labels, s.shape[-1]), jnp.nan, rows)) / _count(s)


def _hinge_gradient(s, labels, margin):
    """With a_j = 1[j != y and not s_j - s_y + margin <= 0]: ds_j = a_j for j != y,
    ds_y = -sum_j a_j, over N (subgradient 0 at the hinge); NaN on the rows of out-of-range
    labels, whose term is NaN."""
    m, is_y = _margins(s, labels, margin)
    active = (~is_y & ~(m <= 0)).astype(s.dtype)  # NaN margins are active, as in relu
    ds = active - is_y.astype(s.dtype) * jnp.sum(active, axis=-1, keepdims=True)
    ds = jnp.where(_out_of_range(labels, s.shape[-1])[..., None], jnp.nan, ds)
    return ds / _count(s), None


_hinge = _loss(_hinge_value, _hinge_gradient, nondiff=(2,))
