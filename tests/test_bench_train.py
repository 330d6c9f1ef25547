"""scripts/bench_train.py: every framework's twin is the same network, the reference variant
really runs on the oracle, and a short run writes its table and JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_train as bt  # noqa: E402


def _count(tree):
    return sum(math.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name, want", [("lenet5", 61_706), ("cs231n_convnet", 1_116_970)])
@pytest.mark.parametrize("variant", ["stax"]
                         + (["flax"] if importlib.util.find_spec("flax") else []))
def test_every_twin_has_the_models_parameters_and_output(name, want, variant):
    """Built from the fcnn model's LayerInfo, each twin has its parameter count (asserted for
    fcnn itself in test_models) and its output shape."""
    built = bt.JAX_VARIANTS[variant](name, bt.SHAPES[name])
    assert _count(built.params) == want
    with built.context():
        x = jnp.zeros((2, *bt.SHAPES[name]), jnp.float32)
        out = jax.eval_shape(built.apply, built.params, x)
    assert out.shape == (2, 10)


def test_reference_variant_traces_no_custom_rule():
    x = jnp.zeros((2, 28, 28, 1), jnp.float32)
    y = jnp.zeros((2,), jnp.int32)
    jaxprs = {}
    for variant in ("fcnn", "reference"):
        built = bt.JAX_VARIANTS[variant]("lenet5", (28, 28, 1))
        step, state = bt.train_step(built)
        with built.context():
            jaxprs[variant] = str(jax.make_jaxpr(step)(built.params, state, x, y))
    assert "custom_vjp_call" in jaxprs["fcnn"]
    assert "custom_vjp_call" not in jaxprs["reference"]
    assert bt.core.ops.__name__ == "fcnn.ops"  # the context restored the real ops


def test_short_run_writes_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bt.main(["--models", "lenet5", "--variants", "fcnn,reference,stax", "--batch", "8",
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
    assert "x reference" in capsys.readouterr().out


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit):
        bt.main(["--variants", "fcnn,caffe"])
    with pytest.raises(SystemExit):
        bt.main(["--models", "vgg16"])
