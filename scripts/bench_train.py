"""Train-step throughput: fcnn's hand-written rules against autodiff, stax, flax and PyTorch.

For LeNet-5 (28x28x1) and the CIFAR net `cs231n_convnet` ([conv3-32 x2, pool] [conv3-64 x2,
pool] fc256 fc10, 32x32x3), at batch 128, in one process: one SGD-momentum train step
(forward, softmax cross-entropy, backward, update), timed for every variant

  fcnn       the model from models/ with fcnn's hand-written rules (the library as shipped)
  reference  the same fcnn model with every op taken from fcnn.reference (plain lax, autodiff)
  stax       jax.example_libraries.stax (XLA's defaults: what most JAX code runs)
  flax       flax.linen, when installed (pip install ".[bench]")
  torch      PyTorch eager (NCHW) and torch_cl (channels_last), when installed

with the samples interleaved round-robin so machine drift hits all alike. Reported: median ms
per step, images/s, GFLOP/s (nominal: 3x the forward FLOPs of fcnn.summary), % of the measured
f32 matmul peak, the ratio to stax and to reference (> 1: faster), and for JAX variants the
compiled step's memory (arguments + outputs + XLA's temporary buffers, from memory_analysis).
Then per-example gradients/s (vmap of grad over a batch of 128; torch.func when installed).

    python scripts/bench_train.py [--repeats 15] [--models lenet5,cs231n_convnet]
        [--variants fcnn,reference,stax,flax,torch,torch_cl] [--breakdown] [--json out.json]

`--breakdown` adds where the time goes: every conv layer's forward, dX and dK (and each pool's
and dense layer's forward and forward+backward) timed alone, fcnn's rule against autodiff of the
fcnn.reference op on the same arrays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import ops, summary  # noqa: E402
from fcnn import reference as R  # noqa: E402
from fcnn.layers import core  # noqa: E402
from fcnn.ops import _conv_algorithms as algo  # noqa: E402

SHAPES = {"lenet5": (28, 28, 1), "cs231n_convnet": (32, 32, 3)}
VARIANTS = ("fcnn", "reference", "stax", "flax", "torch", "torch_cl")
LR, MOMENTUM = 0.01, 0.9


# --------------------------------------------------------------------------- architecture
def spec(model):
    """The model's layers as plain tuples, read from its LayerInfo: the one description every
    framework's twin is built from, so all run the same network."""
    out = []
    for child in model.init.info.children:
        info = child.init.info
        c = info.config
        if info.name == "Conv2D":
            if c["stride"] != (1, 1) or c["groups"] != 1 or not isinstance(c["padding"], int):
                raise ValueError(f"bench_train: Conv2D config {c} has no twin here.")
            out.append(("conv", c["out_channels"], c["kernel_size"], c["padding"]))
        elif info.name == "MaxPool2D":
            if c["window"] != c["stride"] or c["padding"] != 0:
                raise ValueError(f"bench_train: MaxPool2D config {c} has no twin here.")
            out.append(("pool", c["window"]))
        elif info.name == "Dense":
            out.append(("dense", c["out_features"]))
        elif info.name in ("ReLU", "Flatten"):
            out.append((info.name.lower(),))
        else:
            raise ValueError(f"bench_train: no twin for layer {info.name}.")
    return out


def _f32(tree):
    """The benchmark is float32 whatever `jax_enable_x64` says."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)


def _xent(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


class Built(NamedTuple):
    """A JAX variant: `apply(params, x)`, its loss, initial params, and the context its
    functions must be traced in."""

    apply: Callable
    loss: Callable
    params: object
    context: Callable = contextlib.nullcontext


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


@contextlib.contextmanager
def on_reference():
    """fcnn's layers look their op up in fcnn.ops at apply time; point them at the oracle."""
    saved = core.ops
    core.ops = R
    try:
        yield
    finally:
        core.ops = saved


def fcnn_variant(name, shape, use_reference=False):
    model = getattr(models, name)(num_classes=10)
    params, _ = model.init(jax.random.key(0), shape)
    if use_reference:
        return Built(model.apply, R.softmax_cross_entropy, params, on_reference)
    return Built(model.apply, ops.softmax_cross_entropy, params)


def stax_variant(name, shape):
    from jax.example_libraries import stax

    layers = []
    for kind, *a in spec(getattr(models, name)()):
        if kind == "conv":
            p = a[2]
            layers.append(stax.Conv(a[0], a[1], padding=((p, p), (p, p))))
        elif kind == "pool":
            layers.append(stax.MaxPool(a[0], a[0]))
        elif kind == "dense":
            layers.append(stax.Dense(a[0]))
        else:
            layers.append({"relu": stax.Relu, "flatten": stax.Flatten}[kind])
    init, apply = stax.serial(*layers)
    _, params = init(jax.random.key(0), (-1, *shape))
    # stax's Dense adds its bias by rank promotion; allow it whatever the caller's setting.
    return Built(apply, _xent, _f32(params), lambda: jax.numpy_rank_promotion("allow"))


def flax_variant(name, shape):
    import flax.linen as nn

    layers = spec(getattr(models, name)())

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            for kind, *a in layers:
                if kind == "conv":
                    x = nn.Conv(a[0], a[1], padding=a[2])(x)
                elif kind == "pool":
                    x = nn.max_pool(x, a[0], a[0])
                elif kind == "dense":
                    x = nn.Dense(a[0])(x)
                elif kind == "relu":
                    x = nn.relu(x)
                else:
                    x = x.reshape(x.shape[0], -1)
            return x

    net = Net()
    return Built(net.apply, _xent, _f32(net.init(jax.random.key(0), jnp.zeros((1, *shape)))))


JAX_VARIANTS = {
    "fcnn": fcnn_variant,
    "reference": lambda name, shape: fcnn_variant(name, shape, use_reference=True),
    "stax": stax_variant,
    "flax": flax_variant,
}


def torch_variant(name, shape, channels_last=False):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    mods, c, (h, w) = [], shape[2], shape[:2]
    for kind, *a in spec(getattr(models, name)()):
        if kind == "conv":
            mods.append(torch.nn.Conv2d(c, a[0], a[1], padding=a[2]))
            c, h, w = a[0], h + 2 * a[2] - a[1][0] + 1, w + 2 * a[2] - a[1][1] + 1
        elif kind == "pool":
            mods.append(torch.nn.MaxPool2d(a[0]))
            h, w = h // a[0][0], w // a[0][1]
        elif kind == "dense":
            mods.append(torch.nn.Linear(c, a[0]))
            c = a[0]
        elif kind == "relu":
            mods.append(torch.nn.ReLU())
        else:
            mods.append(torch.nn.Flatten())
            c = c * h * w
    net = torch.nn.Sequential(*mods)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return step, net, channels_last


# --------------------------------------------------------------------------- timing
class Timed:
    """A variant's `run(n)` (n calls on fixed inputs, then wait), and for a compiled JAX program
    its memory: arguments + outputs + XLA temporaries, and the temporaries alone (bytes)."""

    def __init__(self, variant, run, memory=None, temp=None):
        self.variant, self._run, self.memory, self.temp = variant, run, memory, temp

    def sample(self, n):
        t = time.perf_counter()
        self._run(n)
        return (time.perf_counter() - t) / n


def jax_timed(variant, fn, args, context=contextlib.nullcontext) -> Timed:
    """`fn` jitted and compiled on `args` (traced inside `context`, e.g. on the oracle's ops)."""
    with context():
        compiled = jax.jit(fn).lower(*args).compile()
    m = compiled.memory_analysis()
    memory = temp = None
    if m is not None:
        memory = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                  - m.alias_size_in_bytes)
        temp = m.temp_size_in_bytes

    def run(n):
        for _ in range(n):
            out = compiled(*args)
        jax.block_until_ready(out)

    return Timed(variant, run, memory, temp)


def train_runner(variant, name, shape, x, y) -> Timed:
    """One variant's train step closed over its inputs."""
    if variant.startswith("torch"):
        import torch

        step, _, cl = torch_variant(name, shape, variant == "torch_cl")
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        if cl:
            tx = tx.contiguous(memory_format=torch.channels_last)
        ty = torch.from_numpy(y.astype(np.int64))
        return Timed(variant, lambda n: [step(tx, ty) for _ in range(n)][-1].item())
    built = JAX_VARIANTS[variant](name, shape)
    step, opt_state = train_step(built)
    args = (built.params, opt_state, jnp.asarray(x), jnp.asarray(y))
    return jax_timed(variant, step, args, built.context)  # traced on the variant's ops


def interleaved(runners, repeats, target=0.25):
    """Medians (s/step) over `repeats` round-robin samples of ~`target` s each; every other
    round runs in reverse order, so no variant always follows the same neighbour."""
    for r in runners:
        r.sample(2)  # warm up
    inner = {r.variant: max(1, int(target / r.sample(2))) for r in runners}
    times = {r.variant: [] for r in runners}
    for i in range(repeats):
        for r in runners if i % 2 == 0 else runners[::-1]:
            times[r.variant].append(r.sample(inner[r.variant]))
    return {v: statistics.median(t) for v, t in times.items()}


def matmul_peak(repeats=10, n=2048):
    """f32 GFLOP/s of one jitted n x n matmul: the practical peak XLA reaches on this machine."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


# --------------------------------------------------------------------------- per-example
def per_example_runner(variant, name, shape, x, y) -> Timed | None:
    """Per-example gradients of the whole batch (vmap of grad)."""
    if variant == "torch":
        return Timed(variant, _torch_per_example(name, shape, x, y))
    if variant not in JAX_VARIANTS:
        return None
    built = JAX_VARIANTS[variant](name, shape)
    return jax_timed(variant, per_example_fn(built), (built.params, jnp.asarray(x),
                                                      jnp.asarray(y)), built.context)


def _torch_per_example(name, shape, x, y):
    import torch
    from torch.func import functional_call, grad, vmap

    _, net, _ = torch_variant(name, shape)
    params = {k: v.detach() for k, v in net.named_parameters()}
    loss_fn = torch.nn.CrossEntropyLoss()

    def single(p, xi, yi):
        return loss_fn(functional_call(net, p, (xi[None],)), yi[None])

    g = vmap(grad(single), in_dims=(None, 0, 0))
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    ty = torch.from_numpy(y.astype(np.int64))

    def run(n):
        for _ in range(n):
            g(params, tx, ty)

    return run


# --------------------------------------------------------------------------- breakdown
def _layer_maps(info, shape, batch, rng):
    """(label, algorithm, {map: (fcnn fn, autodiff fn, args)}) for one layer, or None."""
    c = info.config
    r = lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    x, out = r((batch, *shape)), info.shape(shape)
    g = r((batch, *out))
    if info.name == "Conv2D":
        kw = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
                  groups=c["groups"])
        w = r((*c["kernel_size"], shape[2] // c["groups"], c["out_channels"]))
        chosen = "/".join(algo.choose(w.shape, c["groups"], shape[:2]))
        maps = {
            "fwd": (lambda x, w: ops.conv2d(x, w, **kw), lambda x, w: R.conv2d(x, w, **kw),
                    (x, w)),
            "dX": (lambda g, w: ops.conv2d_grad_input(g, w, x.shape, **kw),
                   lambda g, w: jax.vjp(lambda x: R.conv2d(x, w, **kw), x)[1](g)[0], (g, w)),
            "dK": (lambda x, g: ops.conv2d_grad_kernel(x, g, w.shape, **kw),
                   lambda x, g: jax.vjp(lambda w: R.conv2d(x, w, **kw), w)[1](g)[0], (x, g)),
        }
        return chosen, maps
    pools = {"MaxPool2D": "max_pool2d", "AvgPool2D": "avg_pool2d"}
    if info.name in pools:
        kw = dict(window=c["window"], stride=c["stride"], padding=c["padding"])
        mine, theirs = getattr(ops, pools[info.name]), getattr(R, pools[info.name])

        def fb(op):
            return lambda x, g: jax.vjp(lambda x: op(x, **kw), x)[1](g)[0]

        return "", {"fwd": (lambda x: mine(x, **kw), lambda x: theirs(x, **kw), (x,)),
                    "fwd+bwd": (fb(mine), fb(theirs), (x, g))}
    if info.name == "Dense":
        x = r((batch, shape[0]))
        w = r((shape[0], c["out_features"]))

        def fb(op):
            return lambda x, w, g: jax.vjp(op, x, w)[1](g)

        return "", {"fwd": (ops.dense, R.dense, (x, w)),
                    "fwd+bwd": (fb(ops.dense), fb(R.dense), (x, w, g))}
    return None


def breakdown(name, batch, repeats):
    """Per layer and per map: fcnn's rule against autodiff of the reference op, in isolation."""
    shape, rng, rows = SHAPES[name], np.random.default_rng(2), []
    for i, child in enumerate(getattr(models, name)(num_classes=10).init.info.children):
        info = child.init.info
        found = _layer_maps(info, shape, batch, rng)
        if found is not None:
            chosen, maps = found
            for label, (mine, theirs, args) in maps.items():
                t = interleaved([jax_timed("fcnn", mine, args),
                                 jax_timed("autodiff", theirs, args)], repeats, target=0.05)
                rows.append(dict(model=name, layer=f"{i} {info.name}",
                                 shape="x".join(map(str, shape)), algorithm=chosen, map=label,
                                 fcnn_ms=1e3 * t["fcnn"], autodiff_ms=1e3 * t["autodiff"],
                                 ratio=t["autodiff"] / t["fcnn"]))
        shape = info.shape(shape)
    return rows


BREAKDOWN_COLS = [
    ("model", lambda r: r["model"]), ("layer", lambda r: r["layer"]),
    ("input", lambda r: r["shape"]), ("auto (fwd/dX/dK)", lambda r: r["algorithm"]),
    ("map", lambda r: r["map"]), ("fcnn ms", lambda r: f"{r['fcnn_ms']:.2f}"),
    ("autodiff ms", lambda r: f"{r['autodiff_ms']:.2f}"), ("x", lambda r: f"{r['ratio']:.2f}"),
]


# --------------------------------------------------------------------------- main
def available(variant):
    import importlib.util

    module = {"flax": "flax", "torch": "torch", "torch_cl": "torch"}.get(variant)
    return module is None or importlib.util.find_spec(module) is not None


def bench_model(name, variants, batch, repeats, peak):
    shape = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    runners = [train_runner(v, name, shape, x, y) for v in variants]
    medians = interleaved(runners, repeats)
    flops = 3 * summary(getattr(models, name)(num_classes=10), shape).total_flops * batch
    rows = []
    for r in runners:
        t = medians[r.variant]
        row = dict(model=name, variant=r.variant, batch=batch, ms=1e3 * t,
                   images_per_s=batch / t, gflops=flops / t / 1e9,
                   peak_pct=100 * flops / t / 1e9 / peak,
                   memory_mb=r.memory / 2 ** 20 if r.memory else None,
                   temp_mb=r.temp / 2 ** 20 if r.memory else None)
        for base in ("stax", "reference", "torch", "torch_cl"):
            if base in medians and base != r.variant:
                row[f"vs_{base}"] = medians[base] / t
        rows.append(row)
    return rows


def bench_per_example(name, variants, batch, repeats):
    shape = SHAPES[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    runners = [r for v in variants if (r := per_example_runner(v, name, shape, x, y))]
    medians = interleaved(runners, repeats)
    return [dict(model=name, variant=v, batch=batch, ms=1e3 * t, grads_per_s=batch / t)
            for v, t in medians.items()]


def _table(rows, cols):
    head = [c for c, _ in cols]
    body = [[fmt(r) for _, fmt in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _ratio(key):
    return lambda r: f"{r[key]:.2f}" if key in r else "-"


STEP_COLS = [
    ("model", lambda r: r["model"]), ("variant", lambda r: r["variant"]),
    ("ms/step", lambda r: f"{r['ms']:.2f}"), ("img/s", lambda r: f"{r['images_per_s']:,.0f}"),
    ("GFLOP/s", lambda r: f"{r['gflops']:.0f}"), ("%peak", lambda r: f"{r['peak_pct']:.0f}"),
    ("x stax", _ratio("vs_stax")), ("x reference", _ratio("vs_reference")),
    ("x torch", _ratio("vs_torch")), ("x torch_cl", _ratio("vs_torch_cl")),
    ("MB (temp)", lambda r: f"{r['memory_mb']:.1f} ({r['temp_mb']:.1f})"
     if r["memory_mb"] else "-"),
]
PEX_COLS = [
    ("model", lambda r: r["model"]), ("variant", lambda r: r["variant"]),
    ("ms/batch", lambda r: f"{r['ms']:.1f}"), ("grads/s", lambda r: f"{r['grads_per_s']:,.0f}"),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet5,cs231n_convnet")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--per-example", default="lenet5",
                   help="models for the per-example-gradient table ('' for none)")
    p.add_argument("--breakdown", action="store_true",
                   help="also time every layer's maps (forward, dX, dK; pools, dense) alone")
    p.add_argument("--json", type=Path, help="write the rows and the machine here")
    args = p.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    for m in names + [m for m in args.per_example.split(",") if m]:
        if m not in SHAPES:
            p.error(f"unknown model {m!r}; choose from {', '.join(SHAPES)}")
    wanted = [v for v in args.variants.split(",") if v]
    for v in wanted:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    variants = [v for v in wanted if available(v)]
    missing = sorted(set(wanted) - set(variants))
    peak = matmul_peak()
    print(f"jax {jax.__version__} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"f32 matmul peak {peak:.0f} GFLOP/s" + (f"; not installed: {', '.join(missing)}"
                                                  if missing else ""), flush=True)
    steps = []
    for name in names:
        steps += bench_model(name, variants, args.batch, args.repeats, peak)
    print("\ntrain step (forward + loss + backward + SGD-momentum update), batch "
          f"{args.batch}, median of {args.repeats} interleaved samples:")
    print(_table(steps, STEP_COLS))
    pex = []
    for name in [m for m in args.per_example.split(",") if m]:
        pex += bench_per_example(name, [v for v in variants if v != "torch_cl"], args.batch,
                                 args.repeats)
    if pex:
        print(f"\nper-example gradients (vmap of grad), batch {args.batch}:")
        print(_table(pex, PEX_COLS))
    layers = []
    if args.breakdown:
        for name in names:
            layers += breakdown(name, args.batch, args.repeats)
        print(f"\nper layer, batch {args.batch}: fcnn's rules vs autodiff of fcnn.reference "
              "(x = autodiff / fcnn):")
        print(_table(layers, BREAKDOWN_COLS))
    if args.json:
        args.json.write_text(json.dumps(dict(
            jax=jax.__version__, cores=os.cpu_count(), xla_flags=os.environ.get("XLA_FLAGS"),
            matmul_peak_gflops=peak, train_step=steps, per_example=pex, layers=layers),
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
