"""The max pool's backward under each formulation of its first-maximum rule, in one process.

The backward (`max_scatter`: the upstream gradient sent to each window's first maximum) is
timed with its index computed three ways, on the shapes of the models' pools:

  strict      the scan with `x_t > best`, fused into the writes (the rule before NaN-awareness:
              a NaN after a window's first tap never won)
  nan-aware   the scan with a NaN winning over a number, fused into the writes
  argmax      `jnp.argmax` over the stacked taps (first maximum, NaN first)

and "fcnn" is what `ops.max_pool2d`'s backward runs: argmax for narrow tiles, the NaN-aware scan
for wider tiles, and for overlapping windows the scan inside `lax.cond` on whether x holds a NaN
(docs/performance.md, "Max pool backward and NaN"). Median ms and the median per-round ratio to
strict (< 1: faster than strict).

    python benchmarks/max_pool_rules.py [--repeats 15] [--batch B] [--json out.json]
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
from benchmarks._timing import interleaved, jax_timed, medians, pair_ratio  # noqa: E402
from fcnn.ops import pool  # noqa: E402

# (batch, H, W, C), window, stride, padding: LeNet-5's two pools, the CIFAR net's, and the
# 3x3 stride-2 pools of ResNet-18 and GoogLeNet
SHAPES = [((128, 28, 28, 6), 2, 2, 0), ((128, 10, 10, 16), 2, 2, 0),
          ((128, 32, 32, 32), 2, 2, 0), ((64, 32, 32, 64), 3, 2, 1)]


def _scan(nan_aware):
    def index(taps):
        return pool._first_max(taps, nan_aware)
    return index


def _argmax(taps):
    return jnp.argmax(jnp.stack([xs for _, xs in taps], axis=-1), axis=-1)


VARIANTS = {"strict": _scan(False), "nan-aware": _scan(True), "argmax": _argmax}


def _backward(index_of_taps, cfg):
    """`pool._max_scatter_impl` with the index of every path computed by `index_of_taps`."""
    def argmax_taps(x, cfg):
        return index_of_taps((a * cfg.window[1] + b, xs)
                             for a, b, xs in pool._taps(x, cfg, -jnp.inf))

    def tile_argmax(rows, cfg):
        return index_of_taps(pool._row_taps(rows, cfg))

    def run(x, g):
        saved = pool._argmax_taps, pool._tile_argmax
        pool._argmax_taps, pool._tile_argmax = argmax_taps, tile_argmax
        try:
            return pool._max_scatter_impl(x, g, cfg)
        finally:
            pool._argmax_taps, pool._tile_argmax = saved
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, help="instead of each shape's own batch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {platform.processor() or ''}"
          f" median of {args.repeats} interleaved runs, float32, max pool backward (ms)")
    names = ["fcnn", *VARIANTS]
    print(f"{'input, window/stride/padding':<34}" + "".join(f"{n:>11}" for n in names)
          + "   ratios to strict")
    rows = []
    rng = np.random.default_rng(0)
    for shape, k, s, p in SHAPES:
        shape = shape if args.batch is None else (args.batch, *shape[1:])
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        cfg = pool._prepare("max_pool2d", x, k, s, p)[2]
        g = jnp.asarray(rng.standard_normal((shape[0], *pool._out_hw(shape[1:3], cfg),
                                             shape[3])), jnp.float32)
        runners = [jax_timed("fcnn", lambda x, g, cfg=cfg: pool._max_scatter_impl(x, g, cfg),
                             (x, g))]
        runners += [jax_timed(n, _backward(v, cfg), (x, g)) for n, v in VARIANTS.items()]
        samples = interleaved(runners, args.repeats, target=0.05)
        ms = {n: 1e3 * t for n, t in medians(samples).items()}
        ratios = {n: pair_ratio(samples, n, "strict") for n in names}
        label = f"{shape} {k}/{s}/{p}"
        print(f"{label:<34}" + "".join(f"{ms[n]:11.3f}" for n in names) + "   "
              + " ".join(f"{n} {ratios[n]:.2f}" for n in names if n != "strict"))
        rows.append(dict(shape=shape, window=k, stride=s, padding=p, ms=ms, vs_strict=ratios))
    if args.json:
        args.json.write_text(json.dumps(dict(jax=jax.__version__, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
