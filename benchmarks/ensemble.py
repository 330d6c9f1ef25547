"""Ensembles and bindings: a K-member vmapped train step against its members run one by one.

For LeNet-5 (28x28x1) and the CIFAR net `cs231n_convnet` (32x32x3), the main job's train step
(`fcnn.train.Recipe().make_step`: Nesterov SGD, weight decay, random shifts) at `--batch`, in one
process, under both bindings of fcnn's rules (`fcnn.ops.set_binding`):

  one        one member's step
  loop       K members' steps one after another (K calls of that step, K parameter sets)
  vmap       the K members in one program: `jax.vmap` of the step over K parameter sets and
             keys, the same batch (what scripts/ensemble.py trains with)

timed interleaved by the shared harness (`_timing`). Reported: median ms per call, and the
ratio vmap / loop (< 1: the vmapped program beats its members run one by one), and each
binding's single step against the custom_vjp binding's.

    python benchmarks/ensemble.py [--members 4] [--batch 64] [--repeats 10]
        [--models lenet5,cs231n_convnet] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import twins  # noqa: E402
from benchmarks._report import key, table  # noqa: E402
from benchmarks._timing import Timed, interleaved, medians, pair_ratio  # noqa: E402
from fcnn import ops, train  # noqa: E402

BINDINGS = ("primitive", "custom_vjp")


def runners(name, members, batch, binding):
    """The `one`, `loop` and `vmap` runners of model `name` under `binding`, compiled now."""
    shape = twins.SHAPES[name]
    model = twins.model(name)
    keys = jax.random.split(jax.random.key(0), members)
    params = jax.vmap(lambda k: model.init(k, shape)[0])(keys)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch, *shape)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    with ops.using_binding(binding):
        opt, step = train.Recipe().make_step(model, steps_per_epoch=100)
        state = jax.vmap(opt.init)(params)
        first = jax.tree_util.tree_map(lambda a: a[0], (params, state))
        one = step.lower(*first, x, y, keys[0]).compile()
        many = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None, 0)))
        vmapped = many.lower(params, state, x, y, keys).compile()
    singles = [jax.tree_util.tree_map(lambda a, k=k: a[k], (params, state))
               for k in range(members)]

    def loop():
        return [one(*member, x, y, k) for member, k in zip(singles, keys)]

    tag = f"{binding}"
    return [Timed(f"{tag} one", lambda: one(*first, x, y, keys[0])),
            Timed(f"{tag} loop", loop),
            Timed(f"{tag} vmap", lambda: vmapped(params, state, x, y, keys))]


def bench(name, members, batch, repeats):
    timed = [r for b in BINDINGS for r in runners(name, members, batch, b)]
    samples = interleaved(timed, repeats, target=0.25)
    ms = {label: 1e3 * t for label, t in medians(samples).items()}
    rows = []
    for b in BINDINGS:
        rows.append(dict(
            model=name, binding=b, members=members, batch=batch,
            one_ms=ms[f"{b} one"], loop_ms=ms[f"{b} loop"], vmap_ms=ms[f"{b} vmap"],
            vmap_over_loop=pair_ratio(samples, f"{b} vmap", f"{b} loop"),
            one_vs_custom_vjp=pair_ratio(samples, f"{b} one", "custom_vjp one"),
        ))
    return rows


COLS = [("model", key("model")), ("binding", key("binding")), ("K", key("members")),
        ("batch", key("batch")), ("one ms", key("one_ms", "{:.2f}")),
        ("loop ms", key("loop_ms", "{:.2f}")), ("vmap ms", key("vmap_ms", "{:.2f}")),
        ("vmap/loop", key("vmap_over_loop", "{:.2f}")),
        ("one/custom_vjp one", key("one_vs_custom_vjp", "{:.2f}"))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--models", type=twins.model_list, default=list(twins.SHAPES))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = [r for name in args.models for r in bench(name, args.members, args.batch,
                                                      args.repeats)]
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
          f"{jax.devices()[0].platform}, medians of {args.repeats} interleaved rounds")
    print(table(rows, COLS))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
