"""Serialise LeNet-5's jitted train step and inference function with `jax.export` for CPU, CUDA
and TPU, and report their sizes. The code path is device-agnostic: the hand-written rules lower
for every platform (CPU-only arrangements sit behind `lax.platform_dependent`).

    python scripts/export.py [--model lenet5] [--batch-size 128] [--out exported/]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import export

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import data, train  # noqa: E402

PLATFORMS = ("cpu", "cuda", "tpu")


def build(model_name: str, batch_size: int):
    model = getattr(models, model_name)()
    shape = models.INPUT_SHAPES[model_name]
    params, _ = model.init(jax.random.key(0), shape)
    # the main job's recipe, without its augmentation: the exported step trains on the batches
    # it is given (random_shift would add its own loops and gathers to every platform's program)
    recipe = train.Recipe(max_shift=0)
    opt, step = recipe.make_step(model, recipe.steps_per_epoch(len(data.load().train_labels)))
    opt_state = opt.init(params)
    opt_leaves, opt_tree = jax.tree_util.tree_flatten(opt_state)

    @jax.jit
    def flat_step(params, opt_leaves, x, y, key_data):
        """The train step with the optimizer state as a flat list (optax's state classes are
        not serialisable) and the PRNG key as its raw uint32 data."""
        state = jax.tree_util.tree_unflatten(opt_tree, opt_leaves)
        params, state, metrics = step(params, state, x, y, jax.random.wrap_key_data(key_data))
        return params, jax.tree_util.tree_leaves(state), metrics

    infer = jax.jit(lambda p, x: jnp.argmax(model.apply(p, x), -1))
    x = jax.ShapeDtypeStruct((batch_size, *shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    key_data = jax.random.key_data(jax.random.key(0))
    return {
        "train_step": (flat_step, (params, opt_leaves, x, y, key_data)),
        "inference": (infer, (params, x)),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5", choices=sorted(models.CLASSIFIERS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", type=Path, help="write <name>.<platforms>.bin files here")
    args = p.parse_args(argv)
    results = {}
    for name, (fn, example) in build(args.model, args.batch_size).items():
        exported = export.export(fn, platforms=PLATFORMS)(*example)
        blob = exported.serialize()
        results[name] = (exported, blob)
        print(f"{name:<11} platforms {', '.join(exported.platforms)}: {len(blob):,} bytes "
              f"serialised ({len(exported.mlir_module()):,} chars of StableHLO)")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{args.model}.{name}.{'-'.join(PLATFORMS)}.bin").write_bytes(blob)
    return results


if __name__ == "__main__":
    main()
