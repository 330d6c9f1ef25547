"""Batch-norm ResNets: fcnn's train step against autodiff of the same model on fcnn.reference.

For each model (default ResNet-20, He et al. 2015, batch norm after every convolution), the
jitted `fcnn.train.make_step` (SGD with momentum 0.9, batch statistics and the running-statistics
update) of the model on fcnn's ops against the same step of `with_ops(model, fcnn.reference)`,
plain lax differentiated by JAX, on one batch of `--size` x `--size` single-channel images (the
embedded MNIST's shape by default), timed interleaved by the shared harness (`_timing`).
Reported: median ms per step, images/s, and the median per-pair ratio autodiff / fcnn (> 1:
fcnn is faster).

    python benchmarks/resnet.py [--models resnet20] [--batch 64] [--size 28] [--repeats 7]
        [--json out.json]
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
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from benchmarks._report import key, table  # noqa: E402
from benchmarks._timing import interleaved, jax_timed, medians, pair_ratio  # noqa: E402
from fcnn import ops, train  # noqa: E402
from fcnn import reference as R  # noqa: E402
from fcnn.layers import with_ops  # noqa: E402

RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def bench(name, batch, size, repeats):
    """One row: fcnn's step of `models.<name>()` against autodiff's, interleaved."""
    model = getattr(models, name)()
    shape = (size, size, 1)
    params, _ = model.init(jax.random.key(0), shape)
    state = model.init_state(shape)
    opt = optax.sgd(0.05, momentum=0.9)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch, *shape)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    args = (params, opt.init(params), x, y, jax.random.key(1), state)
    runners = [
        jax_timed("fcnn", train.make_step(model, opt, ops.softmax_cross_entropy), args),
        jax_timed("autodiff", train.make_step(with_ops(model, R), opt, R.softmax_cross_entropy),
                  args),
    ]
    samples = interleaved(runners, repeats)
    t = medians(samples)
    return dict(model=name, batch=batch, size=size, fcnn_ms=1e3 * t["fcnn"],
                autodiff_ms=1e3 * t["autodiff"], images_per_s=batch / t["fcnn"],
                ratio=pair_ratio(samples, "autodiff", "fcnn"))


COLS = [("model", key("model")), ("fcnn ms", key("fcnn_ms", "{:.1f}")),
        ("autodiff ms", key("autodiff_ms", "{:.1f}")), ("img/s", key("images_per_s", "{:.0f}")),
        ("autodiff / fcnn", key("ratio", "{:.2f}"))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20",
                   type=lambda s: [m for m in s.split(",") if m])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=28, help="image side (single channel)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in RESNETS]
    if unknown:
        p.error(f"--models: {unknown} are not among {', '.join(RESNETS)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} {platform.processor()}, "
          f"batch {args.batch} of {args.size}x{args.size}x1, median of {args.repeats}")
    rows = [bench(m, args.batch, args.size, args.repeats) for m in args.models]
    print(table(rows, COLS))
    if args.json:
        args.json.write_text(json.dumps(dict(jax=jax.__version__, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
