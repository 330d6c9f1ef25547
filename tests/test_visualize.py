"""scripts/visualize.py: the fixed kernels and the saliency are the right numbers; PNGs exist."""

from __future__ import annotations

import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import models
from fcnn import data

ROOT = Path(__file__).resolve().parents[1]
script = runpy.run_path(str(ROOT / "scripts" / "visualize.py"))


def test_fixed_kernels_by_hand():
    image = data.load().test_images[0].astype(np.float64) / 255
    out = script["fixed_kernels"](image)
    x = np.pad(image[..., 0], 1)
    i, j = 10, 14
    patch = x[i: i + 3, j: j + 3]
    for name, kernel in script["KERNELS"].items():
        np.testing.assert_allclose(out[name][i, j], np.sum(patch * np.asarray(kernel)),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["identity"], image[..., 0], atol=1e-6)


def test_saliency_is_the_input_gradient_of_the_score():
    model = models.lenet5()
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    x = jnp.asarray(data.load().test_images[1], jnp.float32) / 255
    sal = script["saliency"](model, params, x, 2)
    eps, (r, c) = 1e-2, (14, 14)
    bump = jnp.zeros_like(x).at[r, c, 0].set(eps)
    fd = (model.apply(params, x + bump)[2] - model.apply(params, x - bump)[2]) / (2 * eps)
    np.testing.assert_allclose(sal[r, c], abs(float(fd)), rtol=5e-2, atol=1e-4)


def test_script_writes_the_four_pictures(tmp_path):
    written = script["main"](["--epochs", "1", "--out-dir", str(tmp_path)])
    assert sorted(p.name for p in written) == ["feature_maps.png", "filters.png", "kernels.png",
                                               "saliency.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
