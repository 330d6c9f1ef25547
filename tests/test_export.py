"""The train step and inference lower for CPU, CUDA and TPU; the export round-trips on CPU;
bfloat16 mixed precision trains like float32."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE") != "thorough",
                    reason="a training run (13 s): the thorough profile; bfloat16's dtype path "
                           "is checked per op every run")
def test_bfloat16_mixed_precision_trains_like_float32():
    """One epoch of LeNet-5 from one initialisation on the same batches, once with float32 and
    once with bfloat16 compute: the bfloat16 run learns, and ends close to the float32 one.

    The learning rate decays to zero over the epoch (cosine), so the end point is stable. With
    the constant 0.05 this test used before, the same figure spread 75.5-92.7% (float32) and
    34.1-93.6% (bfloat16) over seeds 0-7 and the two kernel settings below; seed 0 in bfloat16
    gave 89.65% on the reference machine and 81.25% on an AVX2 one (the floor was 85%)."""
    model = models.lenet5()
    init, _ = model.init(jax.random.key(0), (28, 28, 1))
    ds = data.load()
    evaluate = train.make_evaluate(model)  # both runs' float32 master parameters, one program
    acc = {}
    for name, compute_dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        opt = optax.sgd(optax.cosine_decay_schedule(0.05, 78), momentum=0.9, nesterov=True)
        params, opt_state = init, opt.init(init)
        step = train.make_step(model, opt, compute_dtype=compute_dtype)
        # 78 full batches: a last one of 8 images would compile each step a second time
        for i, (x, y) in enumerate(data.batches(ds.train_images, ds.train_labels, 64, seed=0,
                                                drop_last=True)):
            params, opt_state, _ = step(params, opt_state, x, y, jax.random.key(i))
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))  # masters
        _, acc[name] = evaluate(params, ds.test_images[:2000], ds.test_labels[:2000])
    # What the margins rest on: this recipe with init key and batch seed s, on the reference
    # machine (2-core AVX-512 EPYC, jaxlib 0.10.2), s = 0-15, and s = 0-11 again with
    # XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= (other CPU kernels, other rounding;
    # --xla_cpu_max_isa=AVX2 changed no bit): float32 86.2-92.8%, bfloat16 85.7-92.5%,
    # bfloat16 - float32 from -3.35 to +0.95 points (-3.15 and -3.35 for s = 11, every other
    # run within 0.95). s = 0, as here: 90.9% and 90.85% with either kernel setting. The floor
    # is 5.6 points under the lowest run and 8x chance; the allowed loss is 2.4x the largest seen.
    assert min(acc.values()) > 0.80, acc
    assert acc["bfloat16"] > acc["float32"] - 0.08, acc
