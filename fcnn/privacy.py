"""Per-example gradients and DP-SGD (Abadi et al. 2016), through the hand-written rules.

`jax.vmap` of `jax.grad` over single examples: every op's hand-written rules run inside the
vmap, batched by their own batching rules (the primitive binding) or by JAX (custom_vjp).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fcnn import ops
from fcnn.layers import Layer, check_state, find


def per_example_grads(model: Layer, params, x, y, *, loss: Callable = ops.softmax_cross_entropy,
                      key=None, state=None):
    """Gradients of `loss` for each example separately: a tree like `params` whose leaves gain a
    leading batch axis. With a `key`, the model runs in training mode (dropout) with an
    independent key per example.

    A stateful model needs its `state`. Without a key it runs in evaluation mode, batch norm
    with its running statistics: each example on its own, well defined. With a key, a model with
    batch norm is refused: in training mode its statistics are the batch's, coupling the
    examples, so one example's gradient is not defined on its own (and DP-SGD's per-example
    clipping would not bound an example's influence). `GroupNorm` normalises each example on
    its own and has no such limit.
    """
    check_state("per_example_grads", model, state)
    coupled = find(model, "BatchNorm") if key is not None else []
    if coupled:
        where = coupled[0] + " " if coupled[0] else ""
        raise ValueError(
            f"per_example_grads: {where}BatchNorm couples the examples of a batch in training "
            f"mode ({len(coupled)} in the model): its statistics are the batch's, so one "
            "example's gradient is not defined on its own. Pass no `key` (evaluation mode, the "
            "running statistics), or normalise with GroupNorm, which is per example.")

    def single(params, xi, yi, ki):
        out, _ = model.apply_with_state(params, state, xi[None], key=ki, train=ki is not None)
        return loss(out, yi[None])

    keys = None if key is None else jax.random.split(key, x.shape[0])
    return jax.vmap(jax.grad(single), in_axes=(None, 0, 0, None if key is None else 0))(
        params, x, y, keys)


def global_norms(grads) -> jax.Array:
    """Per-example L2 norm over every leaf of a per-example gradient tree: `(N,)`."""
    leaves = jax.tree_util.tree_leaves(grads)
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1) for g in leaves))


def clip(grads, clip_norm: float):
    """Scale each example's gradient to norm at most `clip_norm`: `g_i * min(1, C / ||g_i||)`."""
    norms = global_norms(grads)
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))
    return jax.tree_util.tree_map(
        lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grads)


def dp_sgd_gradient(grads, key, clip_norm: float, noise_multiplier: float):
    """The DP-SGD update direction from per-example gradients: clip each to `clip_norm`, sum,
    add Gaussian noise with std `noise_multiplier * clip_norm` per coordinate, divide by N."""
    clipped = clip(grads, clip_norm)
    leaves, treedef = jax.tree_util.tree_flatten(clipped)
    keys = jax.random.split(key, len(leaves))
    n = leaves[0].shape[0]
    noisy = [
        (jnp.sum(g, axis=0) + noise_multiplier * clip_norm
         * jax.random.normal(k, g.shape[1:], g.dtype)) / n
        for g, k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(treedef, noisy)
