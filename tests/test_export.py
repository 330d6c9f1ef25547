"""The train step and inference lower for CPU, CUDA and TPU; the export round-trips on CPU;
bfloat16 mixed precision converges."""

from __future__ import annotations

import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import export

import models
from fcnn import data, train

ROOT = Path(__file__).resolve().parents[1]


def test_export_for_every_platform_and_round_trip(tmp_path):
    results = runpy.run_path(str(ROOT / "scripts" / "export.py"))["main"](
        ["--batch-size", "8", "--out", str(tmp_path)])
    assert set(results) == {"train_step", "inference"}
    for exported, blob in results.values():
        assert exported.platforms == ("cpu", "cuda", "tpu") and len(blob) > 1000
    assert len(list(tmp_path.glob("lenet5.*.cpu-cuda-tpu.bin"))) == 2
    # the serialised inference runs on this CPU and agrees with the live model
    restored = export.deserialize(bytearray(results["inference"][1]))
    model = models.lenet5()
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    x = jnp.asarray(data.load().test_images[:8], jnp.float32) / 255
    np.testing.assert_array_equal(restored.call(params, x),
                                  jnp.argmax(model.apply(params, x), -1))


def test_bfloat16_mixed_precision_converges():
    model = models.lenet5()
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    opt = optax.sgd(0.05, momentum=0.9, nesterov=True)
    opt_state = opt.init(params)
    step = train.make_step(model, opt, compute_dtype=jnp.bfloat16)
    ds = data.load()
    for i, (x, y) in enumerate(data.batches(ds.train_images, ds.train_labels, 64, seed=0)):
        params, opt_state, m = step(params, opt_state, x, y, jax.random.key(i))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))  # masters
    _, acc = train.make_evaluate(model, compute_dtype=jnp.bfloat16)(
        params, ds.test_images[:2000], ds.test_labels[:2000])
    assert acc > 0.85, acc  # one epoch on 5,000 digits
