"""Accelerator programs carry accelerator code: `algorithm="auto"` is a CPU measurement, so a
train step exported for CUDA or TPU holds only XLA's native convolutions (what cuDNN and the
TPU's convolution units take) and no loops, while the CPU export keeps the CPU formulations
(taps, col2im, the scan-chunked im2col dK) and one artifact for all three carries both."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest
from jax import export

from fcnn.testing import assert_close

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128  # the export script's default; the im2col dK scans over chunks of this batch

# Per model: (convolutions on an accelerator, convolutions on CPU, loops on CPU, dots on an
# accelerator). Accelerators: every conv layer's forward and dK, and dX for all but the first
# (the image needs no gradient) -- LeNet-5 2 + 2 + 1, the CIFAR net 4 + 4 + 3. The dots are the
# dense layers' forward, dW and dX only (3 + 3 + 3 and 2 + 2 + 2): no im2col or taps GEMMs.
# CPU (the choices of `fcnn.ops.convolution.algorithms.choose`, tested in test_conv.py): LeNet-5 c1
# taps forward (no conv) + XLA's dK, c2 XLA's forward + col2im dX + chunked im2col dK (one
# scan); the CIFAR net c1 taps/im2col, c2-c4 phase forward and dX (6 convs), four chunked dKs.
EXPECTED = {"lenet5": (5, 2, 1, 9), "cs231n_convnet": (11, 6, 4, 6)}


def _count(module: str, op: str) -> int:
    return len(re.findall(rf"\bstablehlo\.{op}\b", module))


@pytest.fixture(scope="module")
def steps():
    build = runpy.run_path(str(ROOT / "scripts" / "export.py"))["build"]
    return {name: build(name, BATCH) for name in EXPECTED}


@pytest.mark.parametrize("model", sorted(EXPECTED))
@pytest.mark.parametrize("platform", ["cuda", "tpu", "rocm"])
def test_accelerator_train_step_holds_only_native_convolutions(steps, model, platform):
    fn, example = steps[model]["train_step"]
    module = export.export(fn, platforms=(platform,))(*example).mlir_module()
    convs, _, _, dots = EXPECTED[model]
    assert _count(module, "convolution") == convs
    assert _count(module, "while") == 0  # no scan over batch chunks: the batch stays parallel
    assert _count(module, "dot_general") == dots


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_cpu_train_step_keeps_the_cpu_formulations(steps, model):
    fn, example = steps[model]["train_step"]
    module = export.export(fn, platforms=("cpu",))(*example).mlir_module()
    _, convs, loops, dots = EXPECTED[model]
    assert _count(module, "convolution") == convs
    assert _count(module, "while") == loops
    assert _count(module, "dot_general") > dots  # im2col / col2im / taps GEMMs


def test_inference_on_accelerators_is_one_native_convolution_per_layer(steps):
    fn, example = steps["lenet5"]["inference"]
    for platform in ("cuda", "tpu"):
        module = export.export(fn, platforms=(platform,))(*example).mlir_module()
        assert _count(module, "convolution") == 2 and _count(module, "while") == 0
    module = export.export(fn, platforms=("cpu",))(*example).mlir_module()
    assert _count(module, "convolution") == 1  # c1 is the taps forward on CPU


def test_one_artifact_for_every_platform_carries_both_programs(steps):
    """Exported for cpu, cuda and tpu at once: the module holds the CPU branch (its scan) and the
    accelerators' native convolutions, picked by platform when it is compiled; deserialised
    here it runs the CPU program and agrees with the live jitted step."""
    fn, example = steps["lenet5"]["train_step"]
    exported = export.export(fn, platforms=("cpu", "cuda", "tpu"))(*example)
    module = exported.mlir_module()
    accelerator_convs, cpu_convs, cpu_loops, _ = EXPECTED["lenet5"]
    assert _count(module, "while") >= cpu_loops
    assert _count(module, "convolution") >= accelerator_convs + cpu_convs
    restored = export.deserialize(bytearray(exported.serialize()))
    rng = np.random.default_rng(0)
    params, opt_leaves, x, y, key_data = example
    x = rng.random(x.shape, np.float32)
    y = rng.integers(0, 10, y.shape, np.int32)
    got = restored.call(params, opt_leaves, x, y, key_data)
    want = fn(params, opt_leaves, x, y, key_data)
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for a, b in zip(got_leaves, want_leaves, strict=True):
        assert_close(a, b, "exported train step")


@pytest.mark.parametrize("precision,want", [(None, "DEFAULT"), ("highest", "HIGHEST")])
def test_precision_reaches_every_convolution_and_product_of_the_gradient(precision, want):
    """Lowered for CUDA (where float32 may otherwise run as TF32, jax#12008): the forward's
    precision is every convolution's and every dot's in the train step's gradient, dX, dK and
    dW included, whatever `jax_default_matmul_precision` says; None leaves that default
    (here "default": the suite's conftest sets "highest")."""
    import jax.numpy as jnp

    from fcnn import ops

    def loss(w, v, x):
        h = ops.conv2d(x, w, stride=2, padding=1, activation="relu", precision=precision)
        h = ops.conv_transpose2d(h, w[..., :3, :], stride=2, precision=precision)
        return jnp.sum(ops.dense(h.reshape(2, -1), v, precision=precision) ** 2)

    args = (jnp.ones((3, 3, 3, 4), jnp.float32), jnp.ones((7 * 7 * 3, 5), jnp.float32),
            jnp.ones((2, 6, 6, 3), jnp.float32))
    with jax.default_matmul_precision("default"):
        module = export.export(jax.jit(jax.grad(loss, argnums=(0, 1))),
                               platforms=("cuda",))(*args).mlir_module()
    ops_seen = [line for line in module.splitlines()
                if "stablehlo.convolution" in line or "stablehlo.dot_general" in line]
    assert len(ops_seen) >= 6, module  # forward, dX and dK of each, and the dense's three
    if precision is None:
        assert "HIGHEST" not in module
    else:
        assert all(f"precision {want}" in line or f"<{want}>" in line or want in line
                   for line in ops_seen), [line for line in ops_seen if want not in line]
