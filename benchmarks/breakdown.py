"""Per layer: where a model's train step spends its time, fcnn's rules against autodiff.

Every conv layer's forward, dX and dK (fcnn's `conv2d_grad_input` / `conv2d_grad_kernel` against
the VJP of fcnn.reference's conv), and every pool's and dense layer's forward and
forward + backward, each timed alone on the layer's own shapes at batch `--batch`: fcnn's rule
against autodiff of the fcnn.reference op on the same arrays, interleaved by the shared harness
(`_timing`, samples of about 50 ms). Reported: median ms of each, the ratio of the medians
autodiff/fcnn (> 1: fcnn is faster) and, for convs, the algorithms fcnn's "auto" runs for the
forward, dX and dK on this CPU (`fcnn.tuning.plan`: measured on first use and cached, or the
built-in table under FCNN_CONV_TUNING=table; on GPU and TPU "auto" runs XLA's native
convolution instead), with fcnn's GFLOP/s for each map (the three maps do the
same 2·N·H_out·W_out·C_out·kh·kw·C_in/groups FLOPs) and its share of the f32 matmul peak
measured in the same run: the distance to the hardware.

    python benchmarks/breakdown.py [--models lenet5,cs231n_convnet] [--batch 128]
        [--repeats 15] [--json out.json]

`python benchmarks/train_step.py --breakdown` appends the same table to its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import twins  # noqa: E402
from benchmarks._report import key, table  # noqa: E402
from benchmarks._timing import matmul_peak, medians  # noqa: E402
from benchmarks.ops import compare  # noqa: E402
from fcnn import ops, tuning  # noqa: E402
from fcnn import reference as R  # noqa: E402

TARGET = 0.05  # seconds per sample
POOLS = {"MaxPool2D": "max_pool2d", "AvgPool2D": "avg_pool2d"}


def _conv_flops(g, w):
    """2 x the multiply-adds of a convolution with output g and HWIO kernel w (w's I is C_in /
    groups): the same for each of its three maps."""
    n, ho, wo, cout = g.shape
    return 2 * n * ho * wo * cout * w.shape[0] * w.shape[1] * w.shape[2]


def _conv_maps(info, x, g, w):
    """(the algorithms "auto" picks, {map: (fcnn fn, autodiff fn, args)}) of a Conv2D."""
    c, win = info.config, info.window
    kw = dict(stride=win.stride, padding=win.padding, dilation=win.dilation, groups=c["groups"])

    def conv(x, w):
        return R.conv2d(x, w, **kw)

    maps = {
        "fwd": (lambda x, w: ops.conv2d(x, w, **kw), conv, (x, w)),
        "dX": (lambda g, w: ops.conv2d_grad_input(g, w, x.shape, **kw),
               lambda g, w: jax.vjp(lambda x: conv(x, w), x)[1](g)[0], (g, w)),
        "dK": (lambda x, g: ops.conv2d_grad_kernel(x, g, w.shape, **kw),
               lambda x, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0], (x, g)),
    }
    # what "auto" runs here: fcnn.tuning's choice per map (measured on first use, cached)
    chosen = [tuning.plan(fn, *args)[0].algorithm for fn, _, args in maps.values()]
    return "/".join(chosen), maps


def _pool_maps(info, x, g):
    win = info.window
    kw = dict(window=win.kernel, stride=win.stride, padding=win.padding)
    mine, theirs = getattr(ops, POOLS[info.kind]), getattr(R, POOLS[info.kind])

    def fb(op):
        return lambda x, g: jax.vjp(lambda x: op(x, **kw), x)[1](g)[0]

    return "", {"fwd": (lambda x: mine(x, **kw), lambda x: theirs(x, **kw), (x,)),
                "fwd+bwd": (fb(mine), fb(theirs), (x, g))}


def _dense_maps(x, g, w):
    def fb(op):
        return lambda x, w, g: jax.vjp(op, x, w)[1](g)

    return "", {"fwd": (ops.dense, R.dense, (x, w)),
                "fwd+bwd": (fb(ops.dense), fb(R.dense), (x, w, g))}


def _layer_maps(info, shape, batch, rng):
    """(algorithm, {map: (fcnn fn, autodiff fn, args)}) for one layer, or None: a layer with
    no rule of its own worth timing (activations, flatten)."""

    def r(s):
        return jnp.asarray(rng.standard_normal(s), jnp.float32)

    if info.kind not in ("Conv2D", "Dense", *POOLS):
        return None
    c = info.config
    x, g = r((batch, *shape)), r((batch, *info.shape(shape)))
    if info.kind == "Conv2D":
        kernel = (*info.window.kernel, shape[2] // c["groups"], c["out_channels"])
        return _conv_maps(info, x, g, r(kernel))
    if info.kind in POOLS:
        return _pool_maps(info, x, g)
    return _dense_maps(x, g, r((shape[0], c["out_features"])))


def breakdown(name, batch, repeats, peak=None):
    """Per layer and per map: fcnn's rule against autodiff of the reference op, in isolation;
    a conv map's row also has fcnn's `gflops` and, given the matmul `peak` (GFLOP/s), its
    `peak_pct`."""
    shape, rng, rows = twins.SHAPES[name], np.random.default_rng(2), []
    for i, child in enumerate(twins.model(name).info.children):
        info = child.info
        found = _layer_maps(info, shape, batch, rng)
        if found is not None:
            chosen, maps = found
            for label, (mine, theirs, args) in maps.items():
                t = medians(compare(mine, theirs, args, repeats, TARGET)[0])
                row = dict(model=name, layer=f"{i} {info.kind}",
                           shape="x".join(map(str, shape)), algorithm=chosen, map=label,
                           fcnn_ms=1e3 * t["fcnn"], autodiff_ms=1e3 * t["autodiff"],
                           ratio=t["autodiff"] / t["fcnn"])
                if info.kind == "Conv2D":
                    g, w = maps["dX"][2]
                    row["gflops"] = _conv_flops(g, w) / t["fcnn"] / 1e9
                    if peak:
                        row["peak_pct"] = 100 * row["gflops"] / peak
                rows.append(row)
        shape = info.shape(shape)
    return rows


COLS = [
    ("model", key("model")), ("layer", key("layer")), ("input", key("shape")),
    ("auto (fwd/dX/dK)", key("algorithm")), ("map", key("map")),
    ("fcnn ms", key("fcnn_ms", "{:.2f}")), ("autodiff ms", key("autodiff_ms", "{:.2f}")),
    ("x", key("ratio", "{:.2f}")), ("GFLOP/s", key("gflops", "{:.1f}")),
    ("%peak", key("peak_pct", "{:.0f}")),
]


def report(rows, batch):
    """The breakdown table, with its title."""
    return (f"per layer, batch {batch}: fcnn's rules vs autodiff of fcnn.reference "
            f"(x = autodiff / fcnn):\n{table(rows, COLS)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=twins.model_list, default="lenet5,cs231n_convnet")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    peak = matmul_peak()
    print(f"f32 matmul peak {peak:.0f} GFLOP/s (one jitted 2048 x 2048 matmul, this run)")
    rows = [row for name in args.models
            for row in breakdown(name, args.batch, args.repeats, peak)]
    print(report(rows, args.batch))
    if args.json:
        args.json.write_text(json.dumps(dict(jax=jax.__version__, matmul_peak_gflops=peak,
                                             layers=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
