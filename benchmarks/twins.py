"""The benchmarked networks, the same network in every framework.

Each variant of a model from models/ is built here from the one description `spec` reads off
the fcnn model's layers (kind, window geometry, configuration), so every framework runs the same
network with the same parameter count:

  fcnn       the model as shipped, fcnn's hand-written rules ("auto": measured, cached)
  fcnn_table the same, its convolution algorithms from the built-in table (no measuring, no
             oneDNN): what "auto" ran before it measured
  reference  the same model on fcnn.reference's ops (plain lax, JAX autodiff), by
             `fcnn.layers.with_ops`
  stax       jax.example_libraries.stax (XLA's defaults: what most JAX code runs)
  flax       flax.linen, when installed (pip install ".[bench]")
  torch      PyTorch eager, NCHW, and torch_cl (channels_last), when installed

A JAX variant is a `Built` (apply, loss, params); a torch one a train step and its module.
Imported by train_step.py; not a command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fcnn.layers  # noqa: E402
import models  # noqa: E402
from fcnn import ops  # noqa: E402
from fcnn import reference as R  # noqa: E402

SHAPES = {"lenet5": (28, 28, 1), "cs231n_convnet": (32, 32, 3)}  # model -> input (H, W, C)
VARIANTS = ("fcnn", "fcnn_table", "reference", "stax", "flax", "torch", "torch_cl")
LR, MOMENTUM = 0.01, 0.9  # every variant's SGD-momentum step


def model(name):
    """The fcnn model `name` of models/, for 10 classes."""
    return getattr(models, name)(num_classes=10)


def _names(kind, known):
    def parse(text):
        names = [n for n in text.split(",") if n]
        for n in names:
            if n not in known:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {n!r}; choose from {', '.join(known)}")
        return names

    parse.__name__ = f"{kind}_list"
    return parse


# argparse types: "a,b" -> ["a", "b"], each checked ("" -> [])
model_list, variant_list = _names("model", SHAPES), _names("variant", VARIANTS)


# --------------------------------------------------------------------------- architecture
def spec(net, input_shape):
    """The model's layers as plain tuples `(kind, input shape, *config)`, read from their
    LayerInfo: the one description every framework's twin is built from. Conv padding is
    explicit `((top, bottom), (left, right))`; a layer with no twin here is a ValueError."""
    out, shape = [], tuple(input_shape)
    for child in net.info.children:
        info = child.info
        c, w = info.config, info.window
        if info.kind == "Conv2D":
            if w.stride != (1, 1) or w.dilation != (1, 1) or c["groups"] != 1:
                raise ValueError(f"twins: Conv2D {w}, groups={c['groups']} has no twin here.")
            out.append(("conv", shape, c["out_channels"], w.kernel, w.pads(shape[:2])))
        elif info.kind == "MaxPool2D":
            if w.stride != w.kernel or w.pads(shape[:2]) != ((0, 0), (0, 0)):
                raise ValueError(f"twins: MaxPool2D {w} has no twin here.")
            out.append(("pool", shape, w.kernel))
        elif info.kind == "Dense":
            out.append(("dense", shape, c["out_features"]))
        elif info.kind in ("ReLU", "Flatten"):
            out.append((info.kind.lower(), shape))
        else:
            raise ValueError(f"twins: no twin for layer {info.kind}.")
        shape = info.shape(shape)
    return out


# --------------------------------------------------------------------------- JAX variants
class Built(NamedTuple):
    """A JAX variant: `apply(params, x)`, its loss `loss(logits, labels)`, initial params."""

    apply: Callable
    loss: Callable
    params: object


def _f32(tree):
    """The benchmark is float32 whatever `jax_enable_x64` says."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)


def _xent(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def fcnn_variant(name, shape):
    net = model(name)
    params, _ = net.init(jax.random.key(0), shape)
    return Built(net.apply, ops.softmax_cross_entropy, params)


def reference_variant(name, shape):
    """The fcnn model with every leaf on fcnn.reference's op: autodiff of plain lax."""
    net = fcnn.layers.with_ops(model(name), R)
    params, _ = net.init(jax.random.key(0), shape)
    return Built(net.apply, R.softmax_cross_entropy, params)


def stax_variant(name, shape):
    from jax.example_libraries import stax

    layers = []
    for kind, _, *a in spec(model(name), shape):
        if kind == "conv":
            layers.append(stax.Conv(a[0], a[1], padding=a[2]))
        elif kind == "pool":
            layers.append(stax.MaxPool(a[0], a[0]))
        elif kind == "dense":
            layers.append(stax.Dense(a[0]))
        else:
            layers.append({"relu": stax.Relu, "flatten": stax.Flatten}[kind])
    init, stax_apply = stax.serial(*layers)
    _, params = init(jax.random.key(0), (-1, *shape))

    def apply(params, x):
        # stax's Dense adds its bias by rank promotion; allow it whatever the caller's setting.
        with jax.numpy_rank_promotion("allow"):
            return stax_apply(params, x)

    return Built(apply, _xent, _f32(params))


def flax_variant(name, shape):
    import flax.linen as nn

    layers = spec(model(name), shape)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            for kind, _, *a in layers:
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
    "fcnn_table": fcnn_variant,  # compiled under fcnn.tuning's built-in table (train_step.py)
    "reference": reference_variant,
    "stax": stax_variant,
    "flax": flax_variant,
}


def available(variant):
    """Whether `variant`'s framework is installed."""
    import importlib.util

    module = {"flax": "flax", "torch": "torch", "torch_cl": "torch"}.get(variant)
    return module is None or importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- PyTorch
def torch_net(name, shape):
    """The model as a torch.nn.Sequential (NCHW); torch pads symmetrically only."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    mods = []
    for kind, in_shape, *a in spec(model(name), shape):
        if kind == "conv":
            (top, bottom), (left, right) = a[2]
            if top != bottom or left != right:
                raise ValueError(f"twins: torch has no asymmetric conv padding {a[2]}.")
            mods.append(torch.nn.Conv2d(in_shape[2], a[0], a[1], padding=(top, left)))
        elif kind == "pool":
            mods.append(torch.nn.MaxPool2d(a[0]))
        elif kind == "dense":
            mods.append(torch.nn.Linear(in_shape[0], a[0]))
        else:
            mods.append({"relu": torch.nn.ReLU, "flatten": torch.nn.Flatten}[kind]())
    return torch.nn.Sequential(*mods)


def torch_batch(x, y, channels_last=False):
    """NHWC float32 images and int labels as torch tensors (NCHW, channels_last if asked)."""
    import torch

    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if channels_last:
        tx = tx.contiguous(memory_format=torch.channels_last)
    return tx, torch.from_numpy(y.astype(np.int64))


def torch_step(name, shape, channels_last=False):
    """`step(x, y) -> loss`: one SGD-momentum train step of the torch twin."""
    import torch

    net = torch_net(name, shape)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return sgd_step(net, LR, MOMENTUM)


def sgd_step(net, lr, momentum):
    """`step(x, y) -> loss`: one SGD-momentum train step of the torch module `net` on the
    cross-entropy loss."""
    import torch

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def torch_per_example(name, shape):
    """`grads(x, y)`: every example's gradients, torch.func's vmap of grad."""
    import torch
    from torch.func import functional_call, grad, vmap

    net = torch_net(name, shape)
    params = {k: v.detach() for k, v in net.named_parameters()}
    loss_fn = torch.nn.CrossEntropyLoss()

    def single(p, xi, yi):
        return loss_fn(functional_call(net, p, (xi[None],)), yi[None])

    g = vmap(grad(single), in_dims=(None, 0, 0))
    return lambda x, y: g(params, x, y)
