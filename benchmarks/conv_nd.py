"""Transposed, 1-D and 3-D convolutions: fcnn against JAX autodiff of lax and PyTorch, in one
process, forward and forward + backward (value and the gradients for x and w).

The shapes: a 1-D transposed convolution upsampling 8x (an audio decoder's: jax-ml/jax#23783
reported such a layer about 100x slower than PyTorch under autodiff on the CPU), 3-D
convolutions and a 3-D transposed convolution of a volumetric U-Net (jax#31662: about 32x), a
depthwise convolution's backward (jax#13800), and two layers of a DCGAN generator (4x4, stride
2, padding 1: 16 -> 32 and 32 -> 64 pixels). fcnn's "auto" chooses each map's algorithm as the
default install does (measured once per shape on this machine, before timing).

Timing (benchmarks/_timing.py): samples of back-to-back calls of about 0.2 s, the three
frameworks interleaved round by round with a 0.25 s pause between them (PyTorch's OpenMP
threads spin after each op); medians of `--repeats` rounds and the median per-round ratios.

    python benchmarks/conv_nd.py [--repeats 7] [--json bench_conv_nd.json]
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

# (name, rank, transposed, N, spatial, C_in, C_out, k, stride, padding, output_padding, groups)
CASES = [
    ("1-D transposed, 8x upsampling", 1, True, 8, (256,), 256, 128, 16, 8, 4, 0, 1),
    ("1-D conv", 1, False, 32, (1024,), 64, 64, 3, 1, 1, 0, 1),
    ("3-D conv 3x3x3", 3, False, 2, (32, 32, 32), 16, 16, 3, 1, 1, 0, 1),
    ("3-D conv stride 2", 3, False, 2, (32, 32, 32), 16, 32, 3, 2, 1, 0, 1),
    ("3-D transposed 2x2x2 s2", 3, True, 2, (16, 16, 16), 32, 16, 2, 2, 0, 0, 1),
    ("depthwise 3x3", 2, False, 32, (32, 32), 64, 64, 3, 1, 1, 0, 64),
    ("DCGAN G 16->32", 2, True, 64, (16, 16), 128, 64, 4, 2, 1, 0, 1),
    ("DCGAN G 32->64", 2, True, 64, (32, 32), 64, 3, 4, 2, 1, 0, 1),
]
TARGET, PAUSE = 0.2, 0.25


def _shapes(case):
    _, rank, transposed, n, sp, cin, cout, k, s, p, op, g = case
    x = (n, *sp, cin)
    w = (*(k,) * rank, cout // g, cin) if transposed else (*(k,) * rank, cin // g, cout)
    kw = dict(stride=s, padding=p, groups=g)
    if transposed:
        kw["output_padding"] = op
    return x, w, kw


def _fns(case):
    rank, transposed = case[1], case[2]
    name = f"conv_transpose{rank}d" if transposed else f"conv{rank}d"
    return getattr(ops, name), getattr(R, name)


def flops(case):
    """Multiply-adds x 2 of the forward: per output cell (forward) or input cell
    (transposed) the kernel's taps x C_in/groups (C_out/groups) x the other channels."""
    _, rank, transposed, n, sp, cin, cout, k, s, p, op, g = case
    x, w, kw = _shapes(case)
    out = jax.eval_shape(lambda a, b: _fns(case)[1](a, b, **kw),
                         jax.ShapeDtypeStruct(x, jnp.float32),
                         jax.ShapeDtypeStruct(w, jnp.float32)).shape
    if transposed:
        return 2 * np.prod(x[:-1]) * k ** rank * cin * cout // g
    return 2 * np.prod(out[:-1]) * k ** rank * cin // g * cout


def _jax_runners(case, x, w, ct):
    ours, oracle = _fns(case)
    kw = _shapes(case)[2]

    def fwd(f):
        return lambda x, w: f(x, w, **kw)

    def fwd_bwd(f):
        def run(ct, x, w):
            y, vjp = jax.vjp(lambda x, w: f(x, w, **kw), x, w)
            return y, vjp(ct)
        return run

    return ({"fcnn": jax_timed("fcnn", fwd(ours), (x, w)),
             "autodiff": jax_timed("autodiff", fwd(oracle), (x, w))},
            {"fcnn": jax_timed("fcnn", fwd_bwd(ours), (ct, x, w)),
             "autodiff": jax_timed("autodiff", fwd_bwd(oracle), (ct, x, w))})


def _torch_runners(case, x, w, ct):
    import torch

    F = torch.nn.functional
    _, rank, transposed, *_ = case
    kw = _shapes(case)[2]
    to_t = (0, rank + 1, *range(1, rank + 1))
    kernel_t = (rank + 1, rank, *range(rank))
    fn = getattr(F, f"conv_transpose{rank}d" if transposed else f"conv{rank}d")
    tx = torch.tensor(np.asarray(x)).permute(*to_t).contiguous()
    tw = torch.tensor(np.asarray(w)).permute(*kernel_t).contiguous()
    tct = torch.tensor(np.asarray(ct)).permute(*to_t).contiguous()
    gx, gw = tx.clone().requires_grad_(), tw.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            return fn(tx, tw, **kw)

    def backward():
        y = fn(gx, gw, **kw)
        return torch.autograd.grad(y, (gx, gw), tct)

    return (Timed("torch", forward, sync=lambda y: y.sum().item()),
            Timed("torch", backward, sync=lambda g: g[0].sum().item()))


def run(repeats):
    rows = []
    rng = np.random.default_rng(0)
    for case in CASES:
        xs, ws, kw = _shapes(case)
        x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
        w = jnp.asarray(rng.standard_normal(ws) / np.sqrt(np.prod(ws[:-1])), jnp.float32)
        out = jax.eval_shape(lambda a, b: _fns(case)[1](a, b, **kw), x, w).shape
        ct = jnp.asarray(rng.standard_normal(out), jnp.float32)
        jax_fwd, jax_bwd = _jax_runners(case, x, w, ct)
        try:
            torch_fwd, torch_bwd = _torch_runners(case, x, w, ct)
        except ImportError:
            torch_fwd = torch_bwd = None
        for mode, runners, torch_runner, mult in (("fwd", jax_fwd, torch_fwd, 1),
                                                   ("fwd+bwd", jax_bwd, torch_bwd, 3)):
            timed = [runners["fcnn"], runners["autodiff"]] + (
                [torch_runner] if torch_runner else [])
            samples = interleaved(timed, repeats, TARGET, pause=PAUSE)
            t = medians(samples)
            row = dict(case=case[0], shape=f"{'x'.join(map(str, xs))} k{case[7]} s{case[8]}",
                       mode=mode, fcnn_ms=1e3 * t["fcnn"], autodiff_ms=1e3 * t["autodiff"],
                       torch_ms=1e3 * t["torch"] if "torch" in t else None,
                       vs_autodiff=pair_ratio(samples, "autodiff", "fcnn"),
                       vs_torch=pair_ratio(samples, "torch", "fcnn") if "torch" in t else None,
                       fcnn_gflops=mult * flops(case) / t["fcnn"] / 1e9)
            rows.append(row)
            print(_fmt(row), flush=True)
    return rows


def _fmt(r):
    torch_ms = f"{r['torch_ms']:9.2f}" if r["torch_ms"] is not None else f"{'-':>9}"
    vs_torch = f"{r['vs_torch']:6.2f}" if r["vs_torch"] is not None else f"{'-':>6}"
    return (f"{r['case']:<30} {r['shape']:<22} {r['mode']:<8} {r['fcnn_ms']:9.2f} "
            f"{r['autodiff_ms']:9.2f} {torch_ms} {r['vs_autodiff']:6.2f} {vs_torch} "
            f"{r['fcnn_gflops']:7.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        import torch

        versions = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        versions = ", torch not installed"
    print(f"jax {jax.__version__}{versions}, {platform.processor() or platform.machine()}; "
          f"median ms of {args.repeats} interleaved rounds, float32; ratios: their time / "
          f"fcnn's (> 1: fcnn faster)")
    print(f"{'case':<30} {'input, kernel, stride':<22} {'mode':<8} {'fcnn':>9} {'autodiff':>9} "
          f"{'torch':>9} {'x autod':>6} {'x torch':>6} {'GFLOP/s':>7}")
    rows = run(args.repeats)
    if args.json:
        args.json.write_text(json.dumps(dict(jax=jax.__version__, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
