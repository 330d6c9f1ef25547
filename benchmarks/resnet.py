"""Batch-norm ResNets: fcnn's train step against autodiff of the same model and PyTorch.

For each model (default ResNet-20, He et al. 2015, batch norm after every convolution), the
jitted `fcnn.train.make_step` (SGD with momentum 0.9, batch statistics and the running-statistics
update) of the model on fcnn's ops against the same step of `with_ops(model, fcnn.reference)`
(plain lax differentiated by JAX) and, when torch is installed, the same network in PyTorch
eager (`torch_resnet`: option-A shortcuts, batch norm with the same momentum and eps), NCHW and
channels_last, on one batch of `--size` x `--size` x `--channels` images (CIFAR's 32x32x3 by
default), timed interleaved by the shared harness (`_timing`). Reported: median ms per step,
images/s, and the median per-pair ratios other / fcnn (> 1: fcnn is faster).

    python benchmarks/resnet.py [--models resnet20] [--batch 128] [--size 32] [--channels 3]
        [--variants fcnn,autodiff,torch,torch_cl] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
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
import models  # noqa: E402
from benchmarks import twins  # noqa: E402
from benchmarks._report import key, table  # noqa: E402
from benchmarks._timing import Timed, interleaved, jax_timed, medians, pair_ratio  # noqa: E402
from fcnn import ops, train  # noqa: E402
from fcnn import reference as R  # noqa: E402
from fcnn.layers import with_ops  # noqa: E402

VARIANTS = ("fcnn", "autodiff", "torch", "torch_cl")
DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
RESNETS = tuple(DEPTHS)
MOMENTUM, LR = 0.9, 0.05


def torch_resnet(name, channels, num_classes=10):
    """models.<name> in PyTorch: conv 3x3 of 16 + BN + ReLU, three stages of basic blocks (16,
    32, 64 filters) with option-A shortcuts (x[:, :, ::2, ::2] and zero channels), global
    average pool, linear. Batch norm's momentum is fcnn's 1 - 0.9, eps 1e-5."""
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)

    def conv_bn(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, stride), nn.ReLU(),
                                      *conv_bn(cout, cout, 1))
            self.pad = cout - cin

        def forward(self, x):
            s = x if not self.pad else nn.functional.pad(x[:, :, ::2, ::2],
                                                        (0, 0, 0, 0, 0, self.pad))
            return torch.relu(self.body(x) + s)

    layers, cin = [*conv_bn(channels, 16, 1), nn.ReLU()], 16
    for stage, width in enumerate((16, 32, 64)):
        for b in range(DEPTHS[name]):
            layers.append(Block(cin, width, 2 if stage > 0 and b == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def torch_runner(variant, name, x, y):
    import torch

    cl = variant == "torch_cl"
    net = torch_resnet(name, x.shape[-1]).train()
    if cl:
        net = net.to(memory_format=torch.channels_last)
    step = twins.sgd_step(net, LR, MOMENTUM)
    tx, ty = twins.torch_batch(x, y, cl)
    return Timed(variant, functools.partial(step, tx, ty), sync=lambda loss: loss.item())


def bench(name, batch, size, channels, variants, repeats):
    """One row: every variant's train step of `name`, interleaved."""
    model = getattr(models, name)()
    shape = (size, size, channels)
    params, _ = model.init(jax.random.key(0), shape)
    state = model.init_state(shape)
    opt = optax.sgd(LR, momentum=MOMENTUM)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    args = (params, opt.init(params), jnp.asarray(x), jnp.asarray(y), jax.random.key(1), state)
    runners = []
    for v in variants:
        if v == "fcnn":
            runners.append(jax_timed(v, train.make_step(model, opt, ops.softmax_cross_entropy),
                                     args))
        elif v == "autodiff":
            runners.append(jax_timed(v, train.make_step(with_ops(model, R), opt,
                                                        R.softmax_cross_entropy), args))
        else:
            runners.append(torch_runner(v, name, x, y))
    samples = interleaved(runners, repeats)
    t = medians(samples)
    row = dict(model=name, batch=batch, shape=shape, images_per_s=batch / t["fcnn"])
    for v in variants:
        row[f"{v}_ms"] = 1e3 * t[v]
        if v != "fcnn":
            row[f"{v}_ratio"] = pair_ratio(samples, v, "fcnn")
    return row


def columns(variants):
    cols = [("model", key("model"))]
    cols += [(f"{v} ms", key(f"{v}_ms", "{:.1f}")) for v in variants]
    cols.append(("fcnn img/s", key("images_per_s", "{:.0f}")))
    cols += [(f"{v} / fcnn", key(f"{v}_ratio", "{:.2f}")) for v in variants if v != "fcnn"]
    return cols


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20",
                   type=lambda s: [m for m in s.split(",") if m])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="image side")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   type=lambda s: [v for v in s.split(",") if v])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in RESNETS]
    if unknown:
        p.error(f"--models: {unknown} are not among {', '.join(RESNETS)}")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "fcnn" not in args.variants:
        p.error(f"--variants: fcnn and any of {', '.join(VARIANTS)}, got {args.variants}")
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        dropped = [v for v in args.variants if v.startswith("torch")]
        args.variants = [v for v in args.variants if v not in dropped]
        if dropped:
            print(f"torch is not installed: {', '.join(dropped)} left out")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} {platform.processor()}, "
          f"batch {args.batch} of {args.size}x{args.size}x{args.channels}, "
          f"median of {args.repeats}")
    rows = [bench(m, args.batch, args.size, args.channels, args.variants, args.repeats)
            for m in args.models]
    print(table(rows, columns(args.variants)))
    if args.json:
        args.json.write_text(json.dumps(dict(jax=jax.__version__, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
