"""K models trained together in one jitted program: `jax.vmap(init)` over K keys, the train
step vmapped over the K parameter sets (same batches, independent inits and dropout/shift keys).
Reports each member's and the averaged ensemble's test accuracy on the embedded MNIST.

    python scripts/ensemble.py [--members 4] [--epochs 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import data, train  # noqa: E402


def train_ensemble(keys, epochs, seed=0, ds=None, model=None):
    """Train one `model` (default LeNet-5) per key, all at once, with the main job's recipe
    (`fcnn.train.Recipe`) for `epochs` epochs. Returns the model, the stacked params `(K, ...)`
    and the stacked state (None for a stateless model; batch norm's running statistics, one
    set per member, for a stateful one)."""
    ds = ds or data.load()
    recipe = train.Recipe(epochs=epochs, seed=seed)
    model = model or models.lenet5()
    shape = ds.train_images.shape[1:]
    params = jax.vmap(lambda k: model.init(k, shape)[0])(keys)
    state = None
    if model.stateful:  # the same initial state for every member, stacked like the params
        state = jax.tree_util.tree_map(lambda s: jnp.broadcast_to(s, (len(keys), *s.shape)),
                                       model.init_state(shape))
    opt, step = recipe.make_step(model, recipe.steps_per_epoch(len(ds.train_labels)))
    opt_state = jax.vmap(opt.init)(params)
    in_axes = (0, 0, None, None, 0, *((0,) if model.stateful else ()))
    vstep = jax.jit(jax.vmap(step, in_axes=in_axes))
    n = 0
    for epoch in range(epochs):
        for x, y in data.batches(ds.train_images, ds.train_labels, recipe.batch_size, seed=seed,
                                 epoch=epoch):
            step_keys = jax.vmap(lambda k: jax.random.fold_in(k, n))(keys)
            if model.stateful:
                params, opt_state, _, state = vstep(params, opt_state, x, y, step_keys, state)
            else:
                params, opt_state, _ = vstep(params, opt_state, x, y, step_keys)
            n += 1
    return model, params, state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ds = data.load()
    t = time.perf_counter()
    keys = jax.random.split(jax.random.key(args.seed), args.members)
    model, params, _ = train_ensemble(keys, args.epochs, seed=args.seed, ds=ds)
    x = jnp.asarray(ds.test_images, jnp.float32) / 255
    # vmap over the members' parameters: fcnn's batching rule runs each member's convolutions
    # as its own (unrolled up to 16 members, a loop past that; no grouped convolution,
    # XLA:CPU's slow path; docs/design.md, "Bindings"). The images are an argument, not a
    # closed-over constant: XLA would fold 31 MB into the program (compile 7.4 s, not 0.9 s).
    predict = jax.vmap(lambda p, x: jax.nn.softmax(model.apply(p, x)), in_axes=(0, None))
    probs = jax.jit(predict)(params, x)
    member_acc = jnp.mean(jnp.argmax(probs, -1) == ds.test_labels[None], axis=1)
    ensemble_acc = float(jnp.mean(jnp.argmax(probs.mean(0), -1) == ds.test_labels))
    for k, acc in enumerate(member_acc):
        print(f"member {k}: test accuracy {100 * float(acc):.2f}%")
    print(f"averaged ensemble of {args.members}: test accuracy {100 * ensemble_acc:.2f}% "
          f"({time.perf_counter() - t:.1f} s, {args.epochs} epochs, one vmapped program)")
    return [float(a) for a in member_acc], ensemble_acc


if __name__ == "__main__":
    main()
