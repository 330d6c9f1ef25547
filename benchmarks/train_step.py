"""Train-step throughput: fcnn's hand-written rules against autodiff, stax, flax and PyTorch.

For LeNet-5 (28x28x1) and the CIFAR net `cs231n_convnet` ([conv3-32 x2, pool] [conv3-64 x2,
pool] fc256 fc10, 32x32x3), at batch 128, in one process: one SGD-momentum train step
(forward, softmax cross-entropy, backward, update), timed for every variant of twins.py

  fcnn       the model from models/ with fcnn's hand-written rules (the library as shipped:
             "auto" measures each convolution map's algorithms, oneDNN's among them where built)
  fcnn_table the same with the built-in table's algorithms (FCNN_CONV_TUNING=table)
  reference  the same fcnn model with every op taken from fcnn.reference (plain lax, autodiff)
  stax       jax.example_libraries.stax (XLA's defaults: what most JAX code runs)
  flax       flax.linen, when installed (pip install ".[bench]")
  torch      PyTorch eager (NCHW) and torch_cl (channels_last), when installed

with the samples interleaved round-robin by the shared harness (`_timing`, samples of about
0.25 s) so machine drift hits all alike. Reported: median ms per step, images/s, GFLOP/s
(nominal: 3x the forward FLOPs of fcnn.summary), % of the measured f32 matmul peak, the ratio of
the medians to stax, reference and torch (> 1: faster), and for JAX variants the compiled step's
memory (arguments + outputs + XLA's temporary buffers, from memory_analysis). Then per-example
gradients/s (vmap of grad over a batch of 128; torch.func when installed).

    python benchmarks/train_step.py [--repeats 15] [--models lenet5,cs231n_convnet]
        [--variants fcnn,reference,stax,flax,torch,torch_cl] [--per-example lenet5]
        [--batch 128] [--breakdown] [--json out.json]

`--breakdown` adds where the time goes: breakdown.py's per-layer table (every conv layer's
forward, dX and dK, each pool's and dense layer's forward and forward+backward, fcnn's rule
against autodiff of the fcnn.reference op on the same arrays).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import breakdown, twins  # noqa: E402
from benchmarks._report import key, table  # noqa: E402
from benchmarks._timing import (  # noqa: E402
    Timed,
    interleaved,
    jax_timed,
    matmul_peak,
    medians,
)
from benchmarks.twins import LR, MOMENTUM, SHAPES, Built  # noqa: E402
from fcnn import summary, tuning  # noqa: E402


# --------------------------------------------------------------------------- what is timed
def train_step(built: Built):
    """One SGD-momentum step, jitted: the same for every JAX variant."""
    opt = optax.sgd(LR, momentum=MOMENTUM)

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(lambda p: built.loss(built.apply(p, x), y))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, opt.init(built.params)


def per_example_fn(built: Built):
    """Gradients of every example's loss separately: vmap of grad over a batch."""

    def single(p, xi, yi):
        return built.loss(built.apply(p, xi[None]), yi[None])

    return jax.jit(jax.vmap(jax.grad(single), in_axes=(None, 0, 0)))


def train_runner(variant, name, shape, x, y) -> Timed:
    """One variant's train step closed over its inputs."""
    if variant.startswith("torch"):
        channels_last = variant == "torch_cl"
        step = twins.torch_step(name, shape, channels_last)
        tx, ty = twins.torch_batch(x, y, channels_last)
        return Timed(variant, functools.partial(step, tx, ty), sync=lambda loss: loss.item())
    built = twins.JAX_VARIANTS[variant](name, shape)
    step, opt_state = train_step(built)
    with _algorithms(variant):
        return jax_timed(variant, step,
                         (built.params, opt_state, jnp.asarray(x), jnp.asarray(y)))


def _algorithms(variant):
    """fcnn_table compiles under the built-in table; every other variant as configured."""
    return tuning.using("table") if variant == "fcnn_table" else contextlib.nullcontext()


def per_example_runner(variant, name, shape, x, y) -> Timed | None:
    """Per-example gradients of the whole batch (vmap of grad); None for variants without."""
    if variant == "torch":
        grads = twins.torch_per_example(name, shape)
        return Timed(variant, functools.partial(grads, *twins.torch_batch(x, y)))
    if variant not in twins.JAX_VARIANTS:
        return None
    built = twins.JAX_VARIANTS[variant](name, shape)
    with _algorithms(variant):
        return jax_timed(variant, per_example_fn(built),
                         (built.params, jnp.asarray(x), jnp.asarray(y)))


def memory(compiled):
    """(arguments + outputs + XLA temporaries, temporaries alone) in bytes of a compiled JAX
    program; (None, None) where XLA does not say (or for torch)."""
    m = compiled.memory_analysis() if compiled is not None else None
    if m is None:
        return None, None
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes), m.temp_size_in_bytes


# --------------------------------------------------------------------------- tables
def _batch(seed, batch, shape):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    return x, rng.integers(0, 10, batch).astype(np.int32)


def bench_model(name, variants, batch, repeats, peak):
    shape = SHAPES[name]
    x, y = _batch(0, batch, shape)
    runners = [train_runner(v, name, shape, x, y) for v in variants]
    t = medians(interleaved(runners, repeats))
    flops = 3 * summary(twins.model(name), shape).total_flops * batch
    rows = []
    for r in runners:
        mem, temp = memory(r.compiled)
        s = t[r.label]
        row = dict(model=name, variant=r.label, batch=batch, ms=1e3 * s,
                   images_per_s=batch / s, gflops=flops / s / 1e9,
                   peak_pct=100 * flops / s / 1e9 / peak,
                   memory_mb=mem / 2 ** 20 if mem else None,
                   temp_mb=temp / 2 ** 20 if mem else None)
        for base in ("stax", "reference", "torch", "torch_cl"):
            if base in t and base != r.label:
                row[f"vs_{base}"] = t[base] / s
        rows.append(row)
    return rows


def bench_per_example(name, variants, batch, repeats):
    shape = SHAPES[name]
    x, y = _batch(1, batch, shape)
    runners = [r for v in variants if (r := per_example_runner(v, name, shape, x, y))]
    t = medians(interleaved(runners, repeats))
    return [dict(model=name, variant=v, batch=batch, ms=1e3 * s, grads_per_s=batch / s)
            for v, s in t.items()]


def _memory_cell(r):
    return f"{r['memory_mb']:.1f} ({r['temp_mb']:.1f})" if r["memory_mb"] else "-"


STEP_COLS = [
    ("model", key("model")), ("variant", key("variant")), ("ms/step", key("ms", "{:.2f}")),
    ("img/s", key("images_per_s", "{:,.0f}")), ("GFLOP/s", key("gflops", "{:.0f}")),
    ("%peak", key("peak_pct", "{:.0f}")), ("x stax", key("vs_stax", "{:.2f}")),
    ("x reference", key("vs_reference", "{:.2f}")), ("x torch", key("vs_torch", "{:.2f}")),
    ("x torch_cl", key("vs_torch_cl", "{:.2f}")), ("MB (temp)", _memory_cell),
]
PEX_COLS = [
    ("model", key("model")), ("variant", key("variant")), ("ms/batch", key("ms", "{:.1f}")),
    ("grads/s", key("grads_per_s", "{:,.0f}")),
]


# --------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=twins.model_list, default="lenet5,cs231n_convnet")
    p.add_argument("--variants", type=twins.variant_list, default=",".join(twins.VARIANTS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--per-example", type=twins.model_list, default="lenet5",
                   help="models for the per-example-gradient table ('' for none)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time every layer's maps (forward, dX, dK; pools, dense) alone")
    p.add_argument("--json", type=Path, help="write the rows and the machine here")
    args = p.parse_args(argv)
    variants = [v for v in args.variants if twins.available(v)]
    missing = sorted(set(args.variants) - set(variants))
    peak = matmul_peak()
    print(f"jax {jax.__version__} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"f32 matmul peak {peak:.0f} GFLOP/s" + (f"; not installed: {', '.join(missing)}"
                                                  if missing else ""), flush=True)
    steps = [row for name in args.models
             for row in bench_model(name, variants, args.batch, args.repeats, peak)]
    print("\ntrain step (forward + loss + backward + SGD-momentum update), batch "
          f"{args.batch}, median of {args.repeats} interleaved samples:")
    print(table(steps, STEP_COLS))
    pex = [row for name in args.per_example
           for row in bench_per_example(name, [v for v in variants if v != "torch_cl"],
                                        args.batch, args.repeats)]
    if pex:
        print(f"\nper-example gradients (vmap of grad), batch {args.batch}:")
        print(table(pex, PEX_COLS))
    layers = []
    if args.breakdown:
        layers = [row for name in args.models
                  for row in breakdown.breakdown(name, args.batch, args.repeats, peak)]
        print("\n" + breakdown.report(layers, args.batch))
    if args.json:
        args.json.write_text(json.dumps(dict(
            jax=jax.__version__, cores=os.cpu_count(), xla_flags=os.environ.get("XLA_FLAGS"),
            matmul_peak_gflops=peak, train_step=steps, per_example=pex, layers=layers),
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
