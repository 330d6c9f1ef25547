"""Training: a jitted, pure train step (`make_step`), evaluation, and the whole loop (`fit`).

`fit(model, dataset, Recipe())` is the main job of `scripts/train.py` as a library function:
batches, steps, evaluation, checkpoints that remember their configuration, bit-exact resume,
the divergence guard, a metrics history, progress hooks and data parallelism. `Recipe()`'s
defaults are the main job's recipe (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fcnn import _args, augment, checkpoint, data, layers, ops, parallel
from fcnn.layers import Layer

OPTIMIZERS = ("sgd", "adam", "adamw")
DTYPES = ("float32", "bfloat16")


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
    """`step(params, opt_state, x, y, key) -> (params, opt_state, metrics)`, jitted and pure;
    for a stateful model (`model.stateful`, e.g. with batch norm)
    `step(params, opt_state, x, y, key, state) -> (params, opt_state, metrics, state)`.

    `key` drives the model's dropout (pass a fresh one per step, e.g. `fold_in(key, step)`);
    `metrics` holds the batch's `loss` (without the L2 term), `accuracy` and `grad_norm` (the
    global L2 norm of the gradient, L2 term included: NaN or inf when any element of it is),
    and for a stateful model `state_finite` (whether every element of the new state is finite:
    what `fit`'s divergence guard reads, in one transfer per step). The model runs with
    `train=True`: a stateful model's new state (running statistics) comes back; no gradient
    flows into it.
    `weight_decay` adds `weight_decay * sum ||w||^2 / 2` to the objective; `max_shift > 0`
    translates each training image by up to that many pixels (`augment.random_shift`).
    `compute_dtype` (e.g. `jnp.bfloat16`) is mixed precision: the forward and backward run in
    that dtype on a cast copy of the parameters, the loss is taken in float32, and the gradients
    arrive (through the cast) in the float32 master parameters the optimizer updates; the state
    stays float32.
    `mesh` (from `fcnn.parallel.batch_mesh`) makes it data-parallel: pass replicated parameters,
    optimizer state and state, and batches split with `parallel.shard_batch`; every output comes
    back replicated on the mesh, and XLA all-reduces the gradients (and batch norm's statistics,
    which are the global batch's).
    """
    weight_decay = _args.as_float(weight_decay, "make_step", "weight_decay", minimum=0)
    max_shift = _args.as_int(max_shift, "make_step", "max_shift", minimum=0)
    stateful = model.stateful

    def objective(params, state, x, y, key):
        if max_shift:
            key, shift_key = jax.random.split(key)
            x = augment.random_shift(shift_key, x, max_shift)
        if compute_dtype is not None:
            params_c = jax.tree_util.tree_map(lambda p: p.astype(compute_dtype), params)
            logits, state = model.apply_with_state(params_c, state, x.astype(compute_dtype),
                                                   key=key, train=True)
            logits = logits.astype(jnp.float32)
        else:
            logits, state = model.apply_with_state(params, state, x, key=key, train=True)
        value = loss(logits, y)
        total = value + weight_decay * l2_penalty(params) if weight_decay else value
        return total, (value, logits, state)

    def step(params, opt_state, x, y, key, state=None):
        layers.check_state("make_step", model, state)
        (_, (value, logits, state)), grads = jax.value_and_grad(objective, has_aux=True)(
            params, state, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        metrics = {"loss": value, "accuracy": accuracy,
                   "grad_norm": optax.global_norm(grads)}
        if stateful:  # the guard's third input: `fit` stops on a non-finite new state
            metrics["state_finite"] = jnp.all(jnp.stack(
                [jnp.all(jnp.isfinite(s)) for s in jax.tree_util.tree_leaves(state)]
                or [jnp.array(True)]))
        return (params, opt_state, metrics, state) if stateful else (params, opt_state, metrics)

    if mesh is None:
        return jax.jit(step)
    return jax.jit(step, out_shardings=parallel.replicated(mesh))


def make_evaluate(model: Layer, loss: Callable = ops.softmax_cross_entropy,
                  batch_size: int = 1000, compute_dtype=None, mesh=None):
    """`evaluate(params, images, labels, state=None) -> (mean loss, accuracy)` over uint8 NHWC
    images, the model in evaluation mode (`train=False`; a stateful model's `state`, e.g. batch
    norm's running statistics, is required and read only); with `mesh`, each batch is split over
    its devices (parameters replicated, as for make_step)."""

    @jax.jit
    def batch_stats(params, state, x, y):
        if compute_dtype is not None:
            params = jax.tree_util.tree_map(lambda p: p.astype(compute_dtype), params)
            x = x.astype(compute_dtype)
        logits = model.apply_with_state(params, state, x)[0].astype(jnp.float32)
        return loss(logits, y) * y.shape[0], jnp.sum(jnp.argmax(logits, -1) == y)

    def evaluate(params, images, labels, state=None):
        layers.check_state("evaluate", model, state)
        total_loss, correct = 0.0, 0
        for x, y in data.batches(images, labels, batch_size, shuffle=False):
            if mesh is not None:
                x, y = parallel.shard_batch(mesh, x, y)
            batch_loss, batch_correct = batch_stats(params, state, x, y)
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
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # the bytes, no copy
    return h.hexdigest()


# --------------------------------------------------------------------------- the loop
@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to train: every choice that, with the model, the data and the devices, determines the
    result. The defaults are the main job's recipe: LeNet-5 on the embedded MNIST, what
    `scripts/train.py` runs (its result: the README's Quickstart; the recipe: docs/training.md).

    Attributes:
      epochs: passes over the training set.
      batch_size: images per step (the last batch of an epoch may be smaller).
      optimizer: "sgd" (Nesterov momentum 0.9), "adam" or "adamw" (optax's defaults).
      lr: peak learning rate; a cosine decay takes it to 0 over the whole run.
      weight_decay: `weight_decay * sum ||w||^2 / 2` over weights (biases excluded).
      max_shift: random translation of each training image, up to this many pixels.
      dtype: "float32", or "bfloat16" (mixed precision, float32 master parameters).
      seed: the initialisation, the batch order and the dropout/shift keys.
    """

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    max_shift: int = 2
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        op = "Recipe"
        checked = dict(
            epochs=_args.as_int(self.epochs, op, "epochs", minimum=1),
            batch_size=_args.as_int(self.batch_size, op, "batch_size", minimum=1),
            lr=_args.as_float(self.lr, op, "lr", above=0),
            weight_decay=_args.as_float(self.weight_decay, op, "weight_decay", minimum=0),
            max_shift=_args.as_int(self.max_shift, op, "max_shift", minimum=0),
            seed=_args.as_int(self.seed, op, "seed", minimum=0),
        )
        for name, allowed in (("optimizer", OPTIMIZERS), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{op}: `{name}` must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}.")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def compute_dtype(self):
        """None for float32, else the mixed-precision compute dtype."""
        return None if self.dtype == "float32" else jnp.dtype(self.dtype)

    def steps_per_epoch(self, n_train: int) -> int:
        return math.ceil(n_train / self.batch_size)

    def optimizer_for(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """The optax optimizer, its cosine schedule spanning `epochs * steps_per_epoch` steps."""
        schedule = optax.cosine_decay_schedule(self.lr, max(self.epochs * steps_per_epoch, 1))
        if self.optimizer == "sgd":
            return optax.sgd(schedule, momentum=0.9, nesterov=True)
        return getattr(optax, self.optimizer)(schedule)

    def make_step(self, model: Layer, steps_per_epoch: int, loss: Callable =
                  ops.softmax_cross_entropy, mesh=None):
        """`(optimizer, step)`: this recipe's optimizer and `make_step` for `model`."""
        opt = self.optimizer_for(steps_per_epoch)
        return opt, make_step(model, opt, loss, weight_decay=self.weight_decay,
                              max_shift=self.max_shift, compute_dtype=self.compute_dtype,
                              mesh=mesh)


class Progress(NamedTuple):
    """What `fit` tells `on_step` after every step."""

    epoch: int  # 1-based, the epoch this step belongs to
    step: int  # steps done in the run so far (this one included)
    seen: int  # images of this epoch done so far
    total: int  # images in an epoch
    loss: float  # this step's batch loss
    seconds: float  # since this epoch began
    grad_norm: float = math.nan  # this step's global gradient norm (the guard's)


class Diverged(RuntimeError):
    """A step gave a non-finite loss, gradient norm or (stateful model) new state. `params`
    (and a stateful model's `state`) are those from before that step: the bad update is not
    applied, and no checkpoint is written after it, so the last good one stays on disk.

    Attributes: `loss`, `grad_norm` (floats), `step` (0-based, the steps done before it),
    `epoch` (1-based), `leaf` (the path of the first parameter leaf, in the params tree's
    order, that the step's update made non-finite, e.g. `"[0]['w']"`; None if none did),
    `bad_leaves` (how many did), `state_leaf` (the first non-finite leaf of the new state, or
    None), `overflow` (an infinite loss or gradient norm: a step too large),
    `suggests_lower_lr` (the advice includes a lower learning rate), `params`, `state`,
    `checkpoint_path`."""

    def __init__(self, loss: float, step: int, epoch: int, params, checkpoint_path, state=None,
                 *, grad_norm: float = math.nan, leaf: str | None = None, bad_leaves: int = 0,
                 leaves: int = 0, state_leaf: str | None = None):
        self.loss, self.step, self.epoch, self.grad_norm = loss, step, epoch, grad_norm
        self.leaf, self.bad_leaves, self.state_leaf = leaf, bad_leaves, state_leaf
        self.params, self.checkpoint_path, self.state = params, checkpoint_path, state
        what = [f"loss {loss}", f"gradient norm {grad_norm}"]
        if leaf is not None:
            what.append(f"the update made {bad_leaves} of {leaves} parameter leaves non-finite, "
                        f"the first params{leaf}")
        if state_leaf is not None:
            what.append(f"the new state is non-finite at state{state_leaf}")
        where = (f"; the last good checkpoint is {checkpoint_path}"
                 if checkpoint_path is not None and Path(checkpoint_path).exists() else "")
        # an overflow (an infinite loss or gradient) points at the step size; a NaN loss at the
        # inputs or the step size; a NaN gradient of a finite loss at a backward rule; a bad
        # state alone at the state's update
        self.overflow = math.isinf(loss) or math.isinf(grad_norm)
        self.suggests_lower_lr = self.overflow or math.isnan(loss)
        if self.overflow:
            hint = "Try a lower learning rate."
        elif math.isnan(loss):
            hint = "Look for NaN in the inputs, or try a lower learning rate."
        elif math.isnan(grad_norm):
            hint = "A NaN gradient of a finite loss comes from a backward pass: an op's rule."
        else:
            hint = "The model's state (e.g. batch norm's running statistics) overflowed."
        super().__init__(f"diverged at step {step} (epoch {epoch}): {'; '.join(what)}. Stopped "
                         f"with the parameters from before this step{where}. {hint}")


def _first_bad(tree) -> tuple[str | None, int, int]:
    """`(path of the first non-finite leaf, how many leaves are, how many leaves there are)`:
    read on the host, only once a step has been found bad."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    bad = [jax.tree_util.keystr(p) for p, a in leaves
           if jnp.issubdtype(jnp.result_type(a), jnp.inexact)
           and not np.isfinite(np.asarray(a)).all()]
    return (bad[0] if bad else None), len(bad), len(leaves)


def _diverged(host, step, epoch, params, path, state, params_next, state_next):
    leaf, bad, total = _first_bad(params_next)
    state_leaf = _first_bad(state_next)[0] if state_next is not None else None
    return Diverged(float(host["loss"]), step, epoch, params, path, state,
                    grad_norm=float(host["grad_norm"]), leaf=leaf, bad_leaves=bad,
                    leaves=total, state_leaf=state_leaf)


class FitResult(NamedTuple):
    params: Any
    opt_state: Any
    history: list[dict]  # per epoch: epoch, train_loss, test_loss, test_accuracy
    step: int  # steps done in the whole run (resumed ones included)
    images_per_second: float | None  # training throughput of the epochs run in this call
    train_seconds: float  # time in those epochs' steps (evaluation excluded)
    params_sha256: str
    state: Any = None  # a stateful model's state (running statistics); None when stateless


def dataset_sha256(dataset: data.Dataset) -> str:
    """A fingerprint of a dataset's arrays (shapes, dtypes and bytes, train and test)."""
    return params_sha256(tuple(dataset))


def run_config(model: Layer, dataset: data.Dataset, recipe: Recipe, *, devices: int = 1,
               params=None, state=None, describe: dict | None = None) -> dict:
    """The configuration a checkpoint records and a resume must match: the recipe's fields,
    the model's structure and arguments (its repr), the data, the device count, where the
    initial parameters (and state) came from, and `describe` (e.g. the names a script was
    given)."""
    init = "seed" if params is None else f"params sha256 {params_sha256(params)}"
    if state is not None:
        init += f", state sha256 {params_sha256(state)}"
    recorded = dict(
        **dataclasses.asdict(recipe), architecture=repr(model),
        train_images=list(dataset.train_images.shape), test_images=list(dataset.test_images.shape),
        dataset_sha256=dataset_sha256(dataset), devices=devices, init=init,
    )
    clash = sorted(set(describe or {}) & set(recorded))
    if clash:
        raise ValueError(f"fit: `describe` may not redefine the recorded entries {clash}.")
    return {**(describe or {}), **recorded}


class CheckpointExists(ValueError):
    """`fit` was given a `checkpoint_dir` that already holds a checkpoint, without `resume`:
    a fresh run would overwrite it after one epoch. `path` is the checkpoint."""

    def __init__(self, path):
        super().__init__(f"fit: {path} already holds a checkpoint; pass resume=True to "
                         "continue that run, or choose another checkpoint_dir.")
        self.path = path


def fit(model: Layer, dataset: data.Dataset, recipe: Recipe = Recipe(), *, params=None,
        state=None, loss: Callable = ops.softmax_cross_entropy, checkpoint_dir=None,
        resume: bool = False, mesh=None, on_step: Callable[[Progress], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        on_resume: Callable[[dict], None] | None = None,
        describe: dict | None = None) -> FitResult:
    """Train `model` on `dataset` with `recipe`, evaluating on the test set after every epoch.

    Args:
      model: a Layer mapping `(N, H, W, C)` images to logits.
      dataset: a `fcnn.data.Dataset` (uint8 NHWC images, int labels).
      recipe: the training recipe; the default is the main job's.
      params: start from these parameters (a fresh optimizer and schedule) instead of
        `model.init` with the recipe's seed.
      state: a stateful model's starting state (e.g. the running statistics of the run that
        trained `params`); by default `model.init_state`. A stateless model takes none.
      loss: `loss(logits, labels) -> scalar`.
      checkpoint_dir: write `checkpoint.npz` there after every epoch (atomically; only process
        0 writes): parameters, optimizer state, the run's key and a stateful model's state. It
        records the run's configuration (`run_config`). A directory that already
        holds a checkpoint is refused unless `resume`.
      resume: continue from `checkpoint_dir`'s checkpoint when there is one (else start); the
        continuation is bit-exact, even after `kill -9`. A checkpoint of another configuration —
        another epoch count included, since the schedule spans the run — raises
        `checkpoint.ConfigMismatch`, naming each difference.
      mesh: a `parallel.batch_mesh`: data-parallel over its devices (batch split evenly).
      on_step: called with a `Progress` after every step (e.g. a progress bar).
      on_epoch: called after every epoch with its record: epoch, train_loss, test_loss,
        test_accuracy, seconds, images_per_second (after the checkpoint is written).
      on_resume: called once a checkpoint is restored, with its info (`step`, `epoch`,
        `config`, `metadata`), before training continues.
      describe: extra JSON entries for the recorded configuration (e.g. the model's name).

    Returns:
      `FitResult(params, opt_state, history, step, images_per_second, train_seconds,
      params_sha256, state)`; `state` is None for a stateless model.

    Raises:
      Diverged: a non-finite batch loss, gradient norm or new state (a stateful model's),
        naming the step, the epoch and the first parameter leaf that went bad; the last good
        checkpoint stays on disk.
      checkpoint.ConfigMismatch, checkpoint.CheckpointError: a checkpoint that cannot be resumed.
      CheckpointExists: (a ValueError) `checkpoint_dir` holds a checkpoint and not `resume`.
      ValueError: a batch size the mesh's devices do not divide; `data.DataError` (a
        ValueError): floating-point images holding NaN or inf, naming the array and the first
        bad index, before any step.
    """
    if resume and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs a checkpoint_dir to resume from.")
    devices = 1 if mesh is None else mesh.devices.size
    if recipe.batch_size % devices:
        raise ValueError(f"fit: `batch_size` ({recipe.batch_size}) must split evenly over the "
                         f"mesh's {devices} devices.")
    data.check_dataset(dataset, "fit")  # before any step: a NaN pixel never reaches one
    n_train = len(dataset.train_labels)
    steps_per_epoch = recipe.steps_per_epoch(n_train)
    if state is not None:
        layers.check_state("fit", model, state)
    config = run_config(model, dataset, recipe, devices=devices, params=params, state=state,
                        describe=describe)
    init_key, run_key = jax.random.split(jax.random.key(recipe.seed))
    input_shape = dataset.train_images.shape[1:]
    if params is None:
        params, _ = model.init(init_key, input_shape)
    if state is None and model.stateful:
        state = model.init_state(input_shape)
    state = _state_dtype(state, params)
    opt, step_fn = recipe.make_step(model, steps_per_epoch, loss, mesh)
    evaluate = make_evaluate(model, loss, compute_dtype=recipe.compute_dtype, mesh=mesh)
    opt_state = opt.init(params)
    epoch, step, history = 0, 0, []
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / "checkpoint.npz"
    if path is not None and path.exists():
        if not resume:
            raise CheckpointExists(path)
        saved, info = checkpoint.restore(
            path, _saved(params, opt_state, run_key, state), config=config)
        params, opt_state, run_key = saved["params"], saved["opt_state"], saved["key"]
        state = saved.get("state")
        epoch, step, history = info["epoch"], info["step"], info["metadata"]["history"]
        if on_resume is not None:
            on_resume(info)
    if mesh is not None:
        params, opt_state, state = parallel.replicate(mesh, (params, opt_state, state))
    # a stateless model's step takes and returns no state: these wrap it to the same shape
    run = step_fn if model.stateful else (
        lambda p, o, x, y, k, s: (*step_fn(p, o, x, y, k), None))
    lead = jax.process_index() == 0
    train_seconds, seen_total = 0.0, 0
    while epoch < recipe.epochs:
        t0, losses, seen = time.perf_counter(), [], 0
        for x, y in data.batches(dataset.train_images, dataset.train_labels, recipe.batch_size,
                                 seed=recipe.seed, epoch=epoch):
            if mesh is not None:
                x, y = parallel.shard_batch(mesh, x, y)
            params_next, opt_state_next, metrics, state_next = run(
                params, opt_state, x, y, jax.random.fold_in(run_key, step), state)
            host = jax.device_get(metrics)  # the step's one transfer to the host
            value = float(host["loss"])
            if not (math.isfinite(value) and math.isfinite(host["grad_norm"])
                    and host.get("state_finite", True)):
                raise _diverged(host, step, epoch + 1, params, path, state, params_next,
                                state_next)
            params, opt_state, state, step = params_next, opt_state_next, state_next, step + 1
            losses.append(value)
            seen += len(y)
            if on_step is not None:
                on_step(Progress(epoch + 1, step, seen, n_train, value,
                                 time.perf_counter() - t0, float(host["grad_norm"])))
        elapsed = time.perf_counter() - t0
        train_seconds, seen_total = train_seconds + elapsed, seen_total + n_train
        test_loss, test_accuracy = evaluate(params, dataset.test_images, dataset.test_labels,
                                            state)
        epoch += 1
        history.append(dict(epoch=epoch, train_loss=float(np.mean(losses)), test_loss=test_loss,
                            test_accuracy=test_accuracy))
        if path is not None and lead:
            checkpoint.save(path, _saved(params, opt_state, run_key, state), step=step,
                            epoch=epoch, config=config, metadata=dict(history=history))
        if on_epoch is not None:
            on_epoch(dict(history[-1], seconds=elapsed, images_per_second=n_train / elapsed))
    return FitResult(params, opt_state, history, step,
                     seen_total / train_seconds if train_seconds else None, train_seconds,
                     params_sha256(params), state)


def _state_dtype(state, params):
    """`state` in the dtype a training step returns it in: each floating leaf promoted with the
    parameters' dtype (batch norm's statistics: float64 for a float64 model, float32 from
    `init_state` otherwise), so the step's inputs keep one dtype from the first step on, and a
    checkpoint's state matches the template a resume builds."""
    floats = [p for p in jax.tree_util.tree_leaves(params)
              if jnp.issubdtype(jnp.result_type(p), jnp.floating)]
    if state is None or not floats:
        return state
    dtype = jnp.result_type(*floats)
    return jax.tree_util.tree_map(
        lambda s: s.astype(jnp.promote_types(s.dtype, dtype))
        if jnp.issubdtype(jnp.result_type(s), jnp.floating) else s, state)


def _saved(params, opt_state, key, state) -> dict:
    """The tree a checkpoint holds: a stateless model's without a `state` entry (so its files
    read as before state existed)."""
    tree = dict(params=params, opt_state=opt_state, key=key)
    return tree if state is None else dict(tree, state=state)


def load_params(path, model: Layer, input_shape=None, *, with_state: bool = False):
    """The parameters of a checkpoint `fit` wrote for `model` (whatever its recipe): to evaluate,
    attack or visualise a trained model, or to start a new run from it (`fit(params=...)`).
    With `with_state`, `(params, state)`: a stateful model's state too (None when stateless),
    which its evaluation needs.

    A checkpoint that records no configuration (an older fcnn's) needs `input_shape` and is read
    as the main job's (SGD) optimizer state.

    Raises:
      CheckpointError: unreadable, tampered, or saved for another model (its recorded
        architecture differs from `repr(model)`, or its leaves do not fit the model's).
    """

    def template(info):  # built from the recorded configuration, the file read once
        config = info["config"]
        saved = config.get("architecture")
        if saved is not None and saved != repr(model):
            raise checkpoint.CheckpointError(f"{path}: saved for another model: {saved[:80]}...")
        shape = input_shape
        if shape is None:
            if "train_images" not in config:
                raise checkpoint.CheckpointError(
                    f"{path}: records no input shape; pass input_shape.")
            shape = tuple(config["train_images"][1:])
        fields = {f.name for f in dataclasses.fields(Recipe)}
        recipe = Recipe(**{k: v for k, v in config.items() if k in fields})
        params, _ = model.init(jax.random.key(0), tuple(shape))
        state = model.init_state(tuple(shape)) if model.stateful else None
        # the optimizer state's structure does not depend on the schedule's length
        return _saved(params, recipe.optimizer_for(1).init(params), jax.random.key(0), state)

    saved = checkpoint.restore(path, template)[0]
    return (saved["params"], saved.get("state")) if with_state else saved["params"]
