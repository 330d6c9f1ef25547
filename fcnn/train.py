"""Training: a jitted, pure train step from a model Layer, a loss and any optax optimizer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fcnn import _args, data, ops, parallel
from fcnn.layers import Layer


def l2_penalty(params) -> jax.Array:
    """`sum ||w||^2 / 2` over the weight matrices and kernels (the "w" leaves; biases excluded)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(
        0.5 * jnp.sum(jnp.square(leaf)) for path, leaf in leaves
        if path and getattr(path[-1], "key", None) == "w"
    ) + jnp.zeros(())


def make_step(model: Layer, optimizer: optax.GradientTransformation,
              loss: Callable = ops.softmax_cross_entropy, weight_decay: float = 0.0,
              max_shift: int = 0, compute_dtype=None, mesh=None):
    """`step(params, opt_state, x, y, key) -> (params, opt_state, metrics)`, jitted and pure.

    `key` drives the model's dropout (pass a fresh one per step, e.g. `fold_in(key, step)`);
    `metrics` holds the batch's `loss` (without the L2 term) and `accuracy`.
    `weight_decay` adds `weight_decay * sum ||w||^2 / 2` to the objective; `max_shift > 0`
    translates each training image by up to that many pixels (`data.random_shift`).
    `compute_dtype` (e.g. `jnp.bfloat16`) is mixed precision: the forward and backward run in
    that dtype on a cast copy of the parameters, the loss is taken in float32, and the gradients
    arrive (through the cast) in the float32 master parameters the optimizer updates.
    `mesh` (from `fcnn.parallel.batch_mesh`) makes it data-parallel: pass replicated parameters
    and optimizer state and batches split with `parallel.shard_batch`; every output comes back
    replicated on the mesh, and XLA all-reduces the gradients.
    """
    weight_decay = _args.as_float(weight_decay, "make_step", "weight_decay", minimum=0)
    max_shift = _args.as_int(max_shift, "make_step", "max_shift", minimum=0)

    def objective(params, x, y, key):
        if max_shift:
            key, shift_key = jax.random.split(key)
            x = data.random_shift(shift_key, x, max_shift)
        if compute_dtype is not None:
            params_c = jax.tree_util.tree_map(lambda p: p.astype(compute_dtype), params)
            logits = model.apply(params_c, x.astype(compute_dtype), key=key, train=True)
            logits = logits.astype(jnp.float32)
        else:
            logits = model.apply(params, x, key=key, train=True)
        value = loss(logits, y)
        total = value + weight_decay * l2_penalty(params) if weight_decay else value
        return total, (value, logits)

    def step(params, opt_state, x, y, key):
        (_, (value, logits)), grads = jax.value_and_grad(objective, has_aux=True)(
            params, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return params, opt_state, {"loss": value, "accuracy": accuracy}

    if mesh is None:
        return jax.jit(step)
    return jax.jit(step, out_shardings=parallel.replicated(mesh))


def make_evaluate(model: Layer, loss: Callable = ops.softmax_cross_entropy,
                  batch_size: int = 1000, compute_dtype=None, mesh=None):
    """`evaluate(params, images, labels) -> (mean loss, accuracy)` over uint8 NHWC images;
    with `mesh`, each batch is split over its devices (parameters replicated, as for make_step)."""

    @jax.jit
    def batch_stats(params, x, y):
        if compute_dtype is not None:
            params = jax.tree_util.tree_map(lambda p: p.astype(compute_dtype), params)
            x = x.astype(compute_dtype)
        logits = model.apply(params, x).astype(jnp.float32)
        return loss(logits, y) * y.shape[0], jnp.sum(jnp.argmax(logits, -1) == y)

    def evaluate(params, images, labels):
        total_loss, correct = 0.0, 0
        for x, y in data.batches(images, labels, batch_size, shuffle=False):
            if mesh is not None:
                x, y = parallel.shard_batch(mesh, x, y)
            batch_loss, batch_correct = batch_stats(params, x, y)
            total_loss += float(batch_loss)
            correct += int(batch_correct)
        n = len(labels)
        return total_loss / n, correct / n

    return evaluate


def params_sha256(params) -> str:
    """A fingerprint of the parameters' bytes (leaf order and dtypes included)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        a = np.asarray(leaf)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
