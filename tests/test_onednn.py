"""The native part: oneDNN's convolutions through the XLA FFI (fcnn.ops.onednn).

Where it is built, "onednn" is in ALGORITHMS and the sweeps of test_conv.py and the transforms
of test_transforms.py prove it like every other algorithm; these tests check what is particular
to a foreign kernel: that it really runs (the custom calls in the program), where it does not
(other dtypes, other platforms, under the table), vmap, export, its threads, and the message
when it is not built.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from fcnn import ops, tuning
from fcnn import reference as R
from fcnn.ops import onednn
from fcnn.ops.convolution import algorithms as algo
from fcnn.testing import assert_close
from tests.strategies import normal

ROOT = Path(__file__).resolve().parents[1]
built = pytest.mark.skipif(not onednn.AVAILABLE, reason=f"oneDNN: {onednn.WHY_NOT}")
KW = dict(stride=2, padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)


def operands(dtype=jnp.float32):
    x, w = normal(0, (3, 9, 8, 4), dtype), normal(1, (3, 2, 2, 6), dtype)
    return x, w, normal(2, R.conv2d(x, w, **KW).shape, dtype)


def maps(algorithm="onednn"):
    kw = dict(KW, algorithm=algorithm)
    return (lambda x, w, g: ops.conv2d(x, w, **kw),
            lambda x, w, g: ops.conv2d_grad_input(g, w, x.shape, **kw),
            lambda x, w, g: ops.conv2d_grad_kernel(x, g, w.shape, **kw))


def custom_calls(text):
    return sorted(t for t in onednn.TARGETS.values() if t in text)


@built
def test_each_map_is_one_onednn_call_in_float32_only():
    x, w, g = operands()
    for f, target in zip(maps(), onednn.TARGETS.values()):
        assert custom_calls(jax.jit(f).lower(x, w, g).as_text()) == [target]
    x64, w64, g64 = operands(jnp.float64)  # oneDNN computes float32: XLA's convolution here
    for f, oracle in zip(maps(), maps("xla")):
        assert custom_calls(jax.jit(f).lower(x64, w64, g64).as_text()) == []
        assert_close(f(x64, w64, g64), oracle(x64, w64, g64), "float64 under onednn")
    cfg = ops.conv._config("t", x.shape, w.shape, 1, 0, 1, 2, "auto")
    assert "onednn" in algo.candidates(0, cfg, jnp.float32)
    assert "onednn" not in algo.candidates(2, cfg, jnp.bfloat16)


@built
def test_other_platforms_and_the_table_run_noonednn():
    """Named explicitly it is a CPU kernel (XLA's convolution when lowered for a GPU); "auto"
    under the table never picks it."""
    x, w, g = operands()
    for f in maps():
        assert custom_calls(jax.jit(f).trace(x, w, g).lower(
            lowering_platforms=("cuda",)).as_text()) == []
    with tuning.using("table"):
        for f in maps("auto"):
            assert custom_calls(jax.jit(f).lower(x, w, g).as_text()) == []


@built
def test_a_taps_forward_hands_its_output_over_through_an_opaque_call():
    """`taps`' output (an elementwise chain XLA would fuse into each of its readers: a max
    pool's forward, argmax and the ReLU mask, recomputing it) reaches them through
    `fcnn_materialize` in float32 on the CPU, with its values; not in float64, not exported."""
    x, w = normal(0, (2, 12, 12, 1), jnp.float32), normal(1, (5, 5, 1, 6), jnp.float32)
    b = normal(2, (6,), jnp.float32)

    def step(x, w, b):
        def loss(x, w, b):
            y = ops.conv2d(x, w, b, padding=2, algorithm="taps", activation="relu")
            return jnp.sum(ops.max_pool2d(y, 2) ** 2)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, b)

    def oracle(x, w, b):
        def loss(x, w, b):
            return jnp.sum(R.max_pool2d(R.conv2d(x, w, b, padding=2, activation="relu"), 2) ** 2)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, b)

    assert "fcnn_materialize" in jax.jit(step).lower(x, w, b).as_text()
    for got, want in zip(jax.tree.leaves(jax.jit(step)(x, w, b)),
                         jax.tree.leaves(oracle(x, w, b)), strict=True):
        assert_close(got, want, "taps, handed over")
    x64, w64, b64 = (a.astype(jnp.float64) for a in (x, w, b))
    assert "fcnn_materialize" not in jax.jit(step).lower(x64, w64, b64).as_text()
    exported = jax.export.export(jax.jit(step), platforms=["cpu", "cuda"])(x, w, b)
    assert "fcnn_materialize" not in exported.mlir_module()


@built
def test_vmap_per_example_and_members():
    """Per-example gradients (dK per example: a vmapped members primitive, one oneDNN call per
    example) and an ensemble's members (a loop of calls) equal the oracle."""
    x, w, _ = operands()
    y = jnp.arange(3) % 6

    def loss(conv):
        return lambda w, x, y: jnp.mean(jnp.sin(conv(x[None], w, **KW)) ** 2) + y * 0.0

    ours = jax.jit(jax.vmap(jax.grad(loss(lambda *a, **k: ops.conv2d(*a, **k,
                                                                   algorithm="onednn"))),
                            in_axes=(None, 0, 0)))
    want = jax.vmap(jax.grad(loss(R.conv2d)), in_axes=(None, 0, 0))(w, x, y)
    assert_close(ours(w, x, y), want, "per-example dK")
    ws = jnp.stack([w, 2 * w, -w, w + 1])
    members = jax.jit(jax.vmap(lambda w: ops.conv2d(x, w, **KW, algorithm="onednn")))(ws)
    assert_close(members, jax.vmap(lambda w: R.conv2d(x, w, **KW))(ws), "members")


@built
def test_export_names_the_custom_calls_and_runs_after_import():
    x, w, g = operands()
    f = jax.jit(maps()[0])
    exported = jax.export.export(f, platforms=("cpu",),
                                 disabled_checks=onednn.export_checks())(x, w, g)
    assert custom_calls(exported.mlir_module()) == ["fcnn_onednn_conv_fwd"]
    again = jax.export.deserialize(exported.serialize())
    assert_close(again.call(x, w, g), R.conv2d(x, w, **KW), "exported oneDNN forward")


@built
def test_measured_auto_can_chooseonednn(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_memory", {})

    def fake(shapes, dtype, candidates, run, budget):
        return {c: (0.1 if c == "onednn" else 1.0) for c in candidates}, {}

    monkeypatch.setattr(tuning, "_time_candidates", fake)
    x, w, g = operands()
    with tuning.using("measure"):
        choices = tuning.plan(jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, **KW) ** 2),
                                       (0, 1)), x, w)
        text = jax.jit(lambda x, w: ops.conv2d(x, w, **KW)).lower(x, w).as_text()
    assert {c.algorithm for c in choices} == {"onednn"} and len(choices) == 3
    assert custom_calls(text) == ["fcnn_onednn_conv_fwd"]


@built
def test_implementations_are_listed():
    x, w, g = operands()
    jax.block_until_ready([f(x, w, g) for f in maps()])
    kernels = onednn.implementations().splitlines()
    assert len(kernels) >= 3 and all(" -> " in k for k in kernels)  # a kernel per map


@built
@pytest.mark.parametrize("channels", [6, 16])
def test_a_narrow_dx_matches_the_oracle(channels):
    """An ungrouped dX whose channel count is not a multiple of 16 leaves its layout to oneDNN
    (which then takes its direct kernel, native/onednn_conv.cc); 16 channels are asked for NHWC.
    The values are the oracle's either way, the map ran in oneDNN (its primitive is listed), and
    no configuration run so far fell to oneDNN's reference kernel."""
    x = normal(3, (5, 14, 13, channels), jnp.float32)
    w = normal(4, (5, 5, channels, 16), jnp.float32)
    g = normal(5, R.conv2d(x, w).shape, jnp.float32)
    dx = jax.jit(lambda g, w: ops.conv2d_grad_input(g, w, x.shape, algorithm="onednn"))(g, w)
    assert_close(dx, jax.vjp(lambda x: R.conv2d(x, w), x)[1](g)[0], "dX")
    listed = [k for k in onednn.implementations().splitlines()
              if k.startswith("1,") and f",14,13,{channels},10,9,16,5,5," in k]
    assert listed, onednn.implementations()
    assert " -> ref" not in onednn.implementations(), onednn.implementations()


@built
@pytest.mark.parametrize("k", [2, 3])
def test_an_ensemble_runs_each_map_as_one_members_call(k):
    """K members, each with its own input and kernel (an ensemble past its first layer): the
    forward, dX and dK each one native call over all K (no slice of the members' arrays, no
    stack of results), the K*N images split over the threads across members' boundaries;
    values and gradients equal each member's oracle."""
    xs, ws = normal(0, (k, 3, 9, 8, 4), jnp.float32), normal(1, (k, 3, 2, 2, 6), jnp.float32)

    def loss(conv, **kw):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, **KW, **kw)) ** 2)

    f = jax.jit(jax.vmap(jax.value_and_grad(loss(ops.conv2d, algorithm="onednn"), (0, 1))))
    if ops.binding() == "primitive":  # the members axis is the primitives' batching rule's
        text = f.lower(xs, ws).compile().as_text()  # the CPU's branch of each map, optimised
        assert text.count('custom_call_target="fcnn_onednn_conv_members"') == 3, (
            custom_calls(text))
        assert custom_calls(text) == ["fcnn_onednn_conv_members"]
        assert " slice(" not in text and " concatenate(" not in text
    got = f(xs, ws)
    for i in range(k):
        want = jax.value_and_grad(loss(R.conv2d), (0, 1))(xs[i], ws[i])
        assert_close(got[0][i], want[0], f"member {i}'s loss")
        assert_close(got[1][0][i], want[1][0], f"member {i}'s dX")
        assert_close(got[1][1][i], want[1][1], f"member {i}'s dK")


@built
def test_runs_on_xla_threads_without_an_openmp_team():
    """Each call splits the batch over XLA's own pool, oneDNN single-threaded in each piece: no
    thread is started beside XLA's (an OpenMP team would oversubscribe the cores)."""
    x, w, g = operands()
    xla = [jax.jit(f) for f in maps("xla")]
    jax.block_until_ready([f(x, w, g) for f in xla])  # XLA's pool is up
    before = len(os.listdir("/proc/self/task"))
    jax.block_until_ready([jax.jit(f)(x, w, g) for f in maps()])
    jax.block_until_ready([f(x, w, g) for f in xla])
    assert len(os.listdir("/proc/self/task")) == before


@built
def test_the_calling_threads_openmp_setting_is_left_as_it_was():
    """JAX runs programs on the calling thread (fcnn.memory), which takes pieces of each native
    call with OpenMP's thread count at 1: restored after, or PyTorch's parallel regions on the
    main thread would run on one thread from then on (measured: its ResNet-20 step 1.7x
    slower)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    torch.set_num_threads(2)
    x, w, g = operands()
    jax.block_until_ready([jax.jit(f)(x, w, g) for f in maps()])
    assert torch.get_num_threads() == 2


def test_unbuilt_or_disabled_says_why():
    code = textwrap.dedent("""
        import jax.numpy as jnp
        from fcnn import ops
        from fcnn.ops.convolution import algorithms as algo
        assert "onednn" not in algo.ALGORITHMS
        try:
            ops.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2, 1, 1)), algorithm="onednn")
        except ValueError as e:
            print(e)
    """)
    env = {**os.environ, "FCNN_ONEDNN": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("conv2d: `algorithm` 'onednn' is unavailable: FCNN_ONEDNN=0 "
                                  "in the environment.")
