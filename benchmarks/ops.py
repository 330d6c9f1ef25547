"""Per op: fcnn's hand-written rules against JAX autodiff of the plain lax ops (fcnn.reference).

For every config, in one process: forward, and forward + backward (value and VJP with a fixed
random cotangent), each compiled ahead of time and timed `--repeats` times with fcnn and
autodiff interleaved by the shared harness (`_timing`: samples of about 2 ms of back-to-back
calls, so short ops are timed over several calls per sample). The table shows median ms,
GFLOP/s, and the median over rounds of the ratio autodiff/fcnn (> 1: fcnn is faster).
"same" marks rows where fcnn's optimised XLA program is identical to autodiff's (names and
metadata aside): there the two run the same machine code and the ratio measures only noise.

    python benchmarks/ops.py [--repeats 30] [--json bench_ops.json] [--only conv]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import (  # noqa: E402
    Samples,
    Timed,
    interleaved,
    jax_timed,
    medians,
    pair_ratio,
)
from fcnn import ops  # noqa: E402
from fcnn import reference as R  # noqa: E402

TARGET = 2e-3  # seconds per sample
CONV = [  # (N, H, W, C_in, C_out, k, stride, padding)
    (128, 28, 28, 1, 6, 5, 1, 0),
    (128, 28, 28, 1, 6, 5, 1, 2),
    (128, 14, 14, 6, 16, 5, 1, 0),
    (128, 32, 32, 3, 32, 3, 1, 1),
    (128, 32, 32, 32, 32, 3, 1, 1),
    (64, 32, 32, 64, 64, 3, 1, 1),
    (64, 32, 32, 64, 128, 3, 2, 1),
]
POOL = [  # (N, H, W, C, window, stride, padding)
    (128, 28, 28, 6, 2, 2, 0),
    (128, 10, 10, 16, 2, 2, 0),
    (128, 32, 32, 32, 2, 2, 0),
    (64, 32, 32, 64, 2, 2, 0),
    (64, 32, 32, 64, 3, 2, 1),
]
NORM = [  # (N, H, W, C): LeNet's first maps, then ResNet-20's three stages at batch 128
    (128, 28, 28, 6),
    (128, 32, 32, 16),
    (128, 16, 16, 32),
    (128, 8, 8, 64),
]
DENSE = [  # (N, in, out)
    (128, 400, 120),
    (128, 4096, 256),
    (128, 1024, 1024),
]


def compare(f_fcnn, f_autodiff, args, repeats, target) -> tuple[Samples, Timed, Timed]:
    """fcnn's function against autodiff's on the same arguments, interleaved: the samples
    (labels "fcnn" and "autodiff") and the two compiled runners."""
    mine, theirs = jax_timed("fcnn", f_fcnn, args), jax_timed("autodiff", f_autodiff, args)
    # no pause between the two: no PyTorch here, and a 0.25 s idle before a 2 ms sample timed
    # the machine waking up (a 2.4 ms pad measured 11.5 ms)
    return interleaved([mine, theirs], repeats, target, pause=0.0), mine, theirs


def _program(compiled):
    """The optimised XLA program, with names and metadata normalised away."""
    lines = []
    for line in compiled.as_text().splitlines():
        line = line.strip()
        if line.startswith(("%", "ROOT", "ENTRY")):
            line = re.sub(r", metadata=\{[^}]*\}", "", line)
            lines.append(re.sub(r"%[\w.\-]+", "%v", line))
    return sorted(lines)


def _fwd_bwd(f):
    """Value and VJP; the cotangent is an argument so XLA cannot constant-fold the backward."""

    def run(ct, *args):
        y, vjp = jax.vjp(f, *args)
        return y, vjp(ct)

    return run


def _measure(name, flops, f_fcnn, f_ref, args, repeats):
    out_shape = jax.eval_shape(f_fcnn, *args).shape
    ct = _rand(out_shape, 1)
    rows = []
    for mode, mult, (a, b), call_args in (
        ("fwd", 1, (f_fcnn, f_ref), args),
        ("fwd+bwd", 3, (_fwd_bwd(f_fcnn), _fwd_bwd(f_ref)), (ct, *args)),
    ):
        samples, mine, theirs = compare(a, b, call_args, repeats, TARGET)
        t = medians(samples)
        rows.append(dict(
            op=name, mode=mode, fcnn_ms=1e3 * t["fcnn"], autodiff_ms=1e3 * t["autodiff"],
            fcnn_gflops=mult * flops / t["fcnn"] / 1e9,
            ratio=pair_ratio(samples, "autodiff", "fcnn"),
            same_program=_program(mine.compiled) == _program(theirs.compiled),
        ))
        print(_fmt(rows[-1]), flush=True)
    return rows


def _rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def bench_conv(repeats):
    rows = []
    for n, h, w, cin, cout, k, s, p in CONV:
        x, kern = _rand((n, h, w, cin), 0), _rand((k, k, cin, cout), 1)
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        flops = 2 * n * ho * wo * cout * k * k * cin
        name = f"conv2d N={n} {h}x{w}x{cin}->{cout} k{k} s{s} p{p}"
        rows += _measure(
            name, flops,
            lambda x, w: ops.conv2d(x, w, stride=s, padding=p),
            lambda x, w: R.conv2d(x, w, stride=s, padding=p),
            (x, kern), repeats,
        )
    return rows


def bench_pool(repeats):
    rows = []
    for n, h, w, c, k, s, p in POOL:
        x = _rand((n, h, w, c), 2)
        flops = n * ((h + 2 * p - k) // s + 1) * ((w + 2 * p - k) // s + 1) * c * k * k
        for label, f, r in (("max_pool2d", ops.max_pool2d, R.max_pool2d),
                            ("avg_pool2d", ops.avg_pool2d, R.avg_pool2d)):
            name = f"{label} N={n} {h}x{w}x{c} k{k} s{s} p{p}"
            rows += _measure(name, flops, lambda x, f=f: f(x, k, s, p),
                             lambda x, r=r: r(x, k, s, p), (x,), repeats)
    return rows


def bench_dense(repeats):
    rows = []
    for n, fin, fout in DENSE:
        x, w, b = _rand((n, fin), 3), _rand((fin, fout), 4), _rand((fout,), 5)
        rows += _measure(f"dense N={n} {fin}->{fout}", 2 * n * fin * fout, ops.dense, R.dense,
                         (x, w, b), repeats)
    return rows


def bench_norm(repeats):
    """Batch norm (training mode: its output, the statistics' cotangents zero as in a layer,
    whose running update stops their gradient) and group norm (4 groups). The GFLOP/s column
    counts one operation per element: read it as G elements/s."""
    rows = []
    for n, h, w, c in NORM:
        x, gamma, beta = _rand((n, h, w, c), 6), _rand((c,), 7), _rand((c,), 8)
        groups = min(c, 4) if c % min(c, 4) == 0 else 1
        shape = f"N={n} {h}x{w}x{c}"
        rows += _measure(f"batch_norm {shape}", x.size,
                         lambda x, g, b: ops.batch_norm(x, g, b)[0],
                         lambda x, g, b: R.batch_norm(x, g, b)[0], (x, gamma, beta), repeats)
        rows += _measure(f"group_norm {shape} G={groups}", x.size,
                         lambda x, g, b, G=groups: ops.group_norm(x, g, b, G),
                         lambda x, g, b, G=groups: R.group_norm(x, g, b, G), (x, gamma, beta),
                         repeats)
    return rows


RESAMPLE = [  # (name, per-example-first shape, fcnn's op, the oracle)
    ("pad reflect 1", (128, 32, 32, 32), lambda x: ops.pad(x, 1, "reflect"),
     lambda x: R.pad(x, 1, "reflect")),
    ("pad circular 2", (128, 16, 16, 64), lambda x: ops.pad(x, 2, "circular"),
     lambda x: R.pad(x, 2, "circular")),
    ("upsample nearest x2", (128, 16, 16, 32), lambda x: ops.upsample(x, 2),
     lambda x: R.upsample(x, 2)),
    ("upsample bilinear x2", (128, 16, 16, 32),
     lambda x: ops.upsample(x, 2, method="bilinear"),
     lambda x: R.upsample(x, 2, method="linear")),
    ("upsample trilinear x2", (4, 8, 16, 16, 16),
     lambda x: ops.upsample(x, 2, method="trilinear"),
     lambda x: R.upsample(x, 2, method="linear")),
    ("adaptive_avg_pool 14->7", (128, 14, 14, 64), lambda x: ops.adaptive_avg_pool(x, 7),
     lambda x: R.adaptive_avg_pool(x, 7)),
    ("adaptive_avg_pool 13->6", (128, 13, 13, 64), lambda x: ops.adaptive_avg_pool(x, 6),
     lambda x: R.adaptive_avg_pool(x, 6)),
    ("pixel_shuffle r2", (128, 16, 16, 64), lambda x: ops.pixel_shuffle(x, 2),
     lambda x: R.pixel_shuffle(x, 2)),
]


def bench_resample(repeats):
    """Padding, upsampling, adaptive pooling and pixel shuffle; the
    GFLOP/s column counts one operation per output element: read it as G elements/s."""
    rows = []
    for name, shape, f, r in RESAMPLE:
        x = _rand(shape, 9)
        size = int(np.prod(jax.eval_shape(f, x).shape))
        rows += _measure(f"{name} {'x'.join(map(str, shape))}", size, f, r, (x,), repeats)
    return rows


def _fmt(r):
    same = "same" if r["same_program"] else ""
    return (f"{r['op']:<44} {r['mode']:<8} {r['fcnn_ms']:9.3f} {r['autodiff_ms']:9.3f} "
            f"{r['fcnn_gflops']:8.1f} {r['ratio']:6.2f}  {same}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per side (>= 20)")
    parser.add_argument("--json", type=Path, help="write the table as JSON here")
    parser.add_argument("--only", choices=["conv", "pool", "dense", "norm", "resample"],
                        action="append")
    args = parser.parse_args(argv)
    groups = args.only or ["conv", "pool", "dense", "norm", "resample"]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {platform.processor() or ''}"
          f" median of {args.repeats} interleaved runs, float32")
    print(f"{'op':<44} {'mode':<8} {'fcnn ms':>9} {'autodiff':>9} {'GFLOP/s':>8} {'ratio':>6}"
          "  XLA program")
    benches = {"conv": bench_conv, "pool": bench_pool, "dense": bench_dense, "norm": bench_norm,
               "resample": bench_resample}
    rows = [row for g in groups for row in benches[g](args.repeats)]
    for mode in ("fwd", "fwd+bwd"):
        worst = min((r for r in rows if r["mode"] == mode), key=lambda r: r["ratio"])
        print(f"min ratio autodiff/fcnn, {mode}: {worst['ratio']:.2f} ({worst['op']})")
    if args.json:
        meta = dict(jax=jax.__version__, repeats=args.repeats, dtype="float32",
                    platform=jax.devices()[0].platform)
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
