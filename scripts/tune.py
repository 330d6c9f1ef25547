"""Pre-tune a model's convolutions: measure the algorithms "auto" picks for its train step and
its evaluation on this machine, keep them in the cache (fcnn.tuning), and print the table.

    python scripts/tune.py [--model lenet5] [--batch-size 64] [--eval-batch-size 1000]
        [--input-shape 28 28 1] [--dtype float32] [--mode measure] [--json choices.json]

Each row is one convolution map (forward, dX, dK) at one shape: the algorithm chosen, whether
it was measured now, read from the cache or taken from the built-in table, the table's own
choice, and the median time of every candidate measured. Later runs of `scripts/train.py` with
the same shapes read the cache and measure nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import train, tuning  # noqa: E402

DEFAULT = train.Recipe()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5", choices=sorted(models.CLASSIFIERS))
    p.add_argument("--batch-size", type=int, default=DEFAULT.batch_size,
                   help="images per train step")
    p.add_argument("--eval-batch-size", type=int, default=1000,
                   help="images per evaluation batch (fcnn.train.make_evaluate's default)")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"),
                   help="per-example input (default: the model's own)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--dtype", default=DEFAULT.dtype, choices=train.DTYPES)
    p.add_argument("--mode", choices=tuning.MODES, help="default: $FCNN_CONV_TUNING or measure")
    p.add_argument("--json", type=Path, help="write the choices as JSON here")
    args = p.parse_args(argv)
    for name in ("batch_size", "eval_batch_size", "num_classes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse(argv)
    if args.mode:
        tuning.set_mode(args.mode)
    model = getattr(models, args.model)(num_classes=args.num_classes)
    shape = tuple(args.input_shape or models.INPUT_SHAPES[args.model])
    recipe = dataclasses.replace(DEFAULT, batch_size=args.batch_size, dtype=args.dtype)
    params, _ = model.init(jax.random.key(0), shape)
    state = model.init_state(shape) if model.stateful else None
    optimizer, step = recipe.make_step(model, steps_per_epoch=1)
    opt_state = optimizer.init(params)
    x = jnp.zeros((args.batch_size, *shape), jnp.float32)
    y = jnp.zeros((args.batch_size,), jnp.int32)
    cdtype = recipe.compute_dtype or jnp.float32

    def evaluate(params, state, x):
        params = jax.tree_util.tree_map(lambda p: p.astype(cdtype), params)
        return model.apply_with_state(params, state, x.astype(cdtype))[0]

    print(f"{args.model} on {'x'.join(map(str, shape))}, {args.dtype}, mode {tuning.mode()}, "
          f"cache {tuning.cache_dir()}")
    print(f"cpu: {tuning.machine()['cpu']} ({', '.join(tuning.machine()['isa'][-4:])}; "
          f"{tuning.machine()['cores']} cores), jax {jax.__version__}")
    out = {}
    for title, fn, fargs in (
            (f"train step, batch {args.batch_size}", step,
             (params, opt_state, x, y, jax.random.key(0)) + ((state,) if state else ())),
            (f"evaluation, batch {args.eval_batch_size}", evaluate,
             (params, state, np.zeros((args.eval_batch_size, *shape), np.float32)))):
        start = time.perf_counter()
        choices = tuning.plan(fn, *fargs)
        print(f"\n{title} ({time.perf_counter() - start:.1f} s)")
        print(tuning.format_plan(choices))
        out[title] = [dataclasses.asdict(c) for c in choices]
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
