"""Padding and resampling ops: fcnn against JAX autodiff of the plain-lax oracle and PyTorch, in
one process, forward and forward + backward (value and the input's gradient).

The same shapes as `benchmarks/ops.py --only resample` (which times fcnn against autodiff alone
with short samples); here each framework is timed in samples of back-to-back calls of about
0.2 s, interleaved round by round with a 0.25 s pause between frameworks (PyTorch's OpenMP
threads spin after each op), and medians of `--repeats` rounds. PyTorch runs channels-first
(NCHW), its layout for these ops.

    python benchmarks/resample.py [--repeats 7] [--json bench_resample.json]
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
from benchmarks._timing import Timed, interleaved, jax_timed, medians, pair_ratio  # noqa: E402
from fcnn import ops  # noqa: E402
from fcnn import reference as R  # noqa: E402

TARGET, PAUSE = 0.2, 0.25


def _cases(F):
    """(name, channels-last shape, fcnn's op, the oracle's, PyTorch's on NC... tensors)."""
    return [
        ("pad reflect 1", (128, 32, 32, 32), lambda x: ops.pad(x, 1, "reflect"),
         lambda x: R.pad(x, 1, "reflect"), lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect")),
        ("pad circular 2", (128, 16, 16, 64), lambda x: ops.pad(x, 2, "circular"),
         lambda x: R.pad(x, 2, "circular"), lambda x: F.pad(x, (2, 2, 2, 2), mode="circular")),
        ("upsample nearest x2", (128, 16, 16, 32), lambda x: ops.upsample(x, 2),
         lambda x: R.upsample(x, 2), lambda x: F.interpolate(x, scale_factor=2)),
        ("upsample bilinear x2", (128, 16, 16, 32),
         lambda x: ops.upsample(x, 2, method="linear", align_corners=False),
         lambda x: R.upsample(x, 2, method="linear", align_corners=False),
         lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
        ("upsample trilinear x2", (4, 8, 16, 16, 16),
         lambda x: ops.upsample(x, 2, method="linear", align_corners=False),
         lambda x: R.upsample(x, 2, method="linear", align_corners=False),
         lambda x: F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)),
        ("adaptive_avg_pool 14->7", (128, 14, 14, 64), lambda x: ops.adaptive_avg_pool(x, 7),
         lambda x: R.adaptive_avg_pool(x, 7), lambda x: F.adaptive_avg_pool2d(x, 7)),
        ("adaptive_avg_pool 13->6", (128, 13, 13, 64), lambda x: ops.adaptive_avg_pool(x, 6),
         lambda x: R.adaptive_avg_pool(x, 6), lambda x: F.adaptive_avg_pool2d(x, 6)),
        ("pixel_shuffle r2", (128, 16, 16, 64), lambda x: ops.pixel_shuffle(x, 2),
         lambda x: R.pixel_shuffle(x, 2), lambda x: F.pixel_shuffle(x, 2)),
    ]


def _fwd_bwd(f):
    def run(ct, x):
        y, vjp = jax.vjp(f, x)
        return y, vjp(ct)
    return run


def run(repeats):
    try:
        import torch
        F = torch.nn.functional
    except ImportError:
        torch, F = None, None
    rows = []
    rng = np.random.default_rng(0)
    for name, shape, ours, oracle, theirs in _cases(F):
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        out = jax.eval_shape(ours, x).shape
        ct = jnp.asarray(rng.standard_normal(out), jnp.float32)
        jax_runners = {"fwd": (jax_timed("fcnn", ours, (x,)), jax_timed("autodiff", oracle, (x,))),
                       "fwd+bwd": (jax_timed("fcnn", _fwd_bwd(ours), (ct, x)),
                                   jax_timed("autodiff", _fwd_bwd(oracle), (ct, x)))}
        torch_runners = {}
        if torch is not None:
            r = len(shape) - 2
            to_t = (0, r + 1, *range(1, r + 1))
            tx = torch.tensor(np.asarray(x)).permute(*to_t).contiguous()
            tct = torch.tensor(np.asarray(ct)).permute(*to_t).contiguous()
            gx = tx.clone().requires_grad_()

            def forward(tx=tx, theirs=theirs):
                with torch.no_grad():
                    return theirs(tx)

            def backward(gx=gx, tct=tct, theirs=theirs):
                return torch.autograd.grad(theirs(gx), gx, tct)[0]

            torch_runners = {"fwd": Timed("torch", forward, sync=lambda y: y.sum().item()),
                             "fwd+bwd": Timed("torch", backward, sync=lambda y: y.sum().item())}
        for mode in ("fwd", "fwd+bwd"):
            timed = [*jax_runners[mode]] + ([torch_runners[mode]] if torch_runners else [])
            samples = interleaved(timed, repeats, TARGET, pause=PAUSE)
            t = medians(samples)
            row = dict(op=name, shape="x".join(map(str, shape)), mode=mode,
                       fcnn_ms=1e3 * t["fcnn"], autodiff_ms=1e3 * t["autodiff"],
                       torch_ms=1e3 * t["torch"] if "torch" in t else None,
                       vs_autodiff=pair_ratio(samples, "autodiff", "fcnn"),
                       vs_torch=pair_ratio(samples, "torch", "fcnn") if "torch" in t else None)
            rows.append(row)
            torch_ms = f"{row['torch_ms']:9.3f}" if row["torch_ms"] is not None else f"{'-':>9}"
            vs = f"{row['vs_torch']:6.2f}" if row["vs_torch"] is not None else f"{'-':>6}"
            print(f"{name:<26} {row['shape']:<18} {mode:<8} {row['fcnn_ms']:9.3f} "
                  f"{row['autodiff_ms']:9.3f} {torch_ms} {row['vs_autodiff']:6.2f} {vs}",
                  flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {platform.processor() or platform.machine()}; median ms of "
          f"{args.repeats} interleaved rounds, float32; ratios: their time / fcnn's")
    print(f"{'op':<26} {'input (NHWC)':<18} {'mode':<8} {'fcnn':>9} {'autodiff':>9} "
          f"{'torch':>9} {'x autod':>6} {'x torch':>6}")
    rows = run(args.repeats)
    if args.json:
        args.json.write_text(json.dumps(dict(jax=jax.__version__, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
