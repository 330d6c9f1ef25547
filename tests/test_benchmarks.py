"""benchmarks/: the shared harness interleaves, calibrates and summarises as documented; every
framework's twin is the same network; the reference variant really runs on the oracle; short
runs of the benchmarks write their tables and JSON."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcnn.layers
from benchmarks import ops as bench_ops
from benchmarks import train_step as ts
from benchmarks import twins
from benchmarks._timing import Timed, interleaved, medians, pair_ratio
from fcnn import reference as R
from fcnn.layers import Conv2D, serial
from fcnn.testing import rule_bindings

# the thorough profile (HYPOTHESIS_PROFILE=thorough) runs what every run leaves out
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def test_harness_interleaves_calibrates_and_takes_medians():
    """On a fake clock: warm-up and calibration per runner, then rounds of `inner` calls each,
    every other round reversed; a sample is seconds per call, synced once."""
    now, calls, syncs = [0.0], [], []
    unit = 2.0 ** -7  # exact in binary: the arithmetic below has no rounding

    def runner(label, cost):
        def call():
            calls.append(label)
            now[0] += cost
            return label

        return Timed(label, call, sync=syncs.append)

    a, b = runner("a", unit), runner("b", 3 * unit)
    samples = interleaved([a, b], repeats=4, target=10 * unit, warmup=1, probe=2, pause=0,
                          clock=lambda: now[0])
    runs = [(label, len(list(group))) for label, group in itertools.groupby(calls)]
    # warm-up 1 call each, probe 2 each; then inner = 10 for a, int(10 / 3) = 3 for b, in
    # rounds a b | b a | a b | b a
    assert runs == [("a", 1), ("b", 1), ("a", 2), ("b", 2),
                    ("a", 10), ("b", 6), ("a", 20), ("b", 6), ("a", 10)]
    assert len(syncs) == 2 + 2 + 2 * 4
    assert samples == {"a": [unit] * 4, "b": [3 * unit] * 4}
    assert medians(samples) == {"a": unit, "b": 3 * unit}
    assert pair_ratio(samples, "b", "a") == 3
    with pytest.raises(ValueError, match="distinct"):
        interleaved([a, a], repeats=1)


def _count(tree):
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name, want", [("lenet5", 61_706), ("cs231n_convnet", 1_116_970)])
@pytest.mark.parametrize("variant", ["stax"]
                         + (["flax"] if importlib.util.find_spec("flax") else []))
def test_every_twin_has_the_models_parameters_and_output(name, want, variant):
    """Built from the fcnn model's LayerInfo, each twin has its parameter count (asserted for
    fcnn itself in test_models) and its output shape (under the suite's strict rank
    promotion)."""
    built = twins.JAX_VARIANTS[variant](name, twins.SHAPES[name])
    assert _count(built.params) == want
    x = jnp.zeros((2, *twins.SHAPES[name]), jnp.float32)
    assert jax.eval_shape(built.apply, built.params, x).shape == (2, 10)


def test_a_layer_without_a_twin_is_refused():
    with pytest.raises(ValueError, match="no twin"):
        twins.spec(serial(Conv2D(4, 3, stride=2)), (8, 8, 1))


def test_reference_variant_traces_no_custom_rule():
    x = jnp.zeros((2, 28, 28, 1), jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    bindings = {}
    for variant in ("reference", "fcnn"):
        built = twins.JAX_VARIANTS[variant]("lenet5", (28, 28, 1))
        step, state = ts.train_step(built)
        bindings[variant] = rule_bindings(step, built.params, state, x, y)
    assert bindings["fcnn"] > 0 and bindings["reference"] == 0
    # with_ops made a copy: the model it was given still runs fcnn's rules
    net = twins.model("lenet5")
    fcnn.layers.with_ops(net, R)
    params, _ = net.init(jax.random.key(0), (28, 28, 1))
    assert rule_bindings(net.apply, params, x) > 0


def test_short_train_step_run_writes_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert ts.main(["--models", "lenet5", "--variants", "fcnn,reference,stax", "--batch", "8",
                    "--repeats", "1", "--breakdown", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["train_step"]}
    assert set(rows) == {"fcnn", "reference", "stax"}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["memory_mb"] > 0
    assert rows["fcnn"]["vs_stax"] == pytest.approx(rows["stax"]["ms"] / rows["fcnn"]["ms"])
    assert {r["variant"] for r in result["per_example"]} == {"fcnn", "reference", "stax"}
    # the breakdown names every conv map with the algorithm "auto" chose for it
    convs = [r for r in result["layers"] if r["layer"].endswith("Conv2D")]
    assert [(r["layer"], r["map"]) for r in convs] == [
        (f"{i} Conv2D", m) for i in (0, 3) for m in ("fwd", "dX", "dK")]
    assert convs[0]["algorithm"] == "taps/im2col/xla" and convs[0]["shape"] == "28x28x1"
    assert {r["map"] for r in result["layers"] if "Pool" in r["layer"]} == {"fwd", "fwd+bwd"}
    assert {r["map"] for r in result["layers"] if "Dense" in r["layer"]} == {"fwd", "fwd+bwd"}
    assert all(r["fcnn_ms"] > 0 and r["autodiff_ms"] > 0 for r in result["layers"])
    # each conv map's GFLOP/s: 2 N Ho Wo Cout kh kw Cin / its time, as a share of the matmul peak
    c1 = convs[0]  # LeNet's first conv: 28x28x1 -> 28x28x6, 5x5, batch 8
    flops = 2 * 8 * 28 * 28 * 6 * 25 * 1
    assert c1["gflops"] == pytest.approx(flops / (c1["fcnn_ms"] / 1e3) / 1e9)
    assert all(r["peak_pct"] == pytest.approx(100 * r["gflops"] / result["matmul_peak_gflops"])
               for r in convs)
    assert not any("gflops" in r for r in result["layers"] if "Conv2D" not in r["layer"])
    printed = capsys.readouterr().out
    assert "x reference" in printed and "per layer, batch 8" in printed and "%peak" in printed


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit):
        ts.main(["--variants", "fcnn,caffe"])
    with pytest.raises(SystemExit):
        ts.main(["--models", "vgg16"])


def test_short_ops_run_writes_its_table(tmp_path):
    out = tmp_path / "bench.json"
    rows = bench_ops.main(["--repeats", "2", "--only", "dense", "--json", str(out)])
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    assert all(r["fcnn_ms"] > 0 and r["autodiff_ms"] > 0 and r["ratio"] > 0 for r in rows)
    assert all(isinstance(r["same_program"], bool) for r in rows)
    assert out.read_text().count('"ratio"') == len(rows)


@pytest.mark.skipif(not THOROUGH, reason="a benchmark's formulations (14 s): the thorough "
                    "profile; the rules they time are proven in test_pool.py every run")
def test_max_pool_rules_run_and_every_formulation_gives_fcnn_s_gradient(tmp_path):
    import benchmarks.max_pool_rules as bench_mp
    from fcnn.ops import pool

    rows = bench_mp.main(["--repeats", "1", "--batch", "2", "--json", str(tmp_path / "m.json")])
    assert len(rows) == len(bench_mp.SHAPES) and all(min(r["ms"].values()) > 0 for r in rows)
    for (shape, k, s, p) in bench_mp.SHAPES:
        x = jnp.asarray(np.random.default_rng(1).standard_normal((2, *shape[1:])), jnp.float32)
        cfg = pool._prepare("max_pool2d", x, k, s, p)[2]
        g = jnp.ones((2, *pool._out_hw(shape[1:3], cfg), shape[3]), jnp.float32)
        want = pool._max_scatter_impl(x, g, cfg)
        for name, index in bench_mp.VARIANTS.items():
            np.testing.assert_array_equal(bench_mp._backward(index, cfg)(x, g), want, name)


@pytest.mark.skipif(not THOROUGH, reason="a ResNet-20 benchmark run (9 s): the thorough "
                    "profile; its PyTorch twin and its refusals are checked every run")
def test_resnet_step_run_writes_its_row(tmp_path, capsys):
    """benchmarks/resnet.py: ResNet-20 with batch norm, fcnn's step against autodiff's, on two
    8x8 images (the layers are the same at any size)."""
    import benchmarks.resnet as bench_resnet

    out = tmp_path / "resnet.json"
    (row,) = bench_resnet.main(["--batch", "2", "--size", "8", "--variants", "fcnn,autodiff",
                                "--repeats", "1", "--json", str(out)])
    assert row["model"] == "resnet20" and row["fcnn_ms"] > 0 and row["autodiff_ms"] > 0
    assert row["images_per_s"] == pytest.approx(2 / (row["fcnn_ms"] / 1e3))
    assert json.loads(out.read_text())["rows"][0]["autodiff_ratio"] == row["autodiff_ratio"]
    assert "autodiff / fcnn" in capsys.readouterr().out
    for bad in (["--models", "lenet5"], ["--variants", "autodiff"], ["--variants", "fcnn,mx"]):
        with pytest.raises(SystemExit):
            bench_resnet.main(bad)


@pytest.mark.parametrize("name", ["resnet20", "resnet32"])
def test_resnet_torch_twin_is_the_same_network(name):
    """The PyTorch twin has fcnn's parameter count (269,722 for ResNet-20) and its output."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import benchmarks.resnet as bench_resnet
    import models

    net = bench_resnet.torch_resnet(name, 3)
    params, _ = getattr(models, name)().init(jax.random.key(0), (32, 32, 3))
    assert sum(p.numel() for p in net.parameters()) == _count(params)
    out = net(torch.zeros(2, 3, 32, 32))
    assert tuple(out.shape) == (2, 10)
