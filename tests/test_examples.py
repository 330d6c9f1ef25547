"""The examples that use the new convolutions reproduce what their docs state: the 1-D
temporal convnet's accuracy (scripts/signals.py) and the U-Net's denoising (scripts/denoise.py),
each in a short run whose threshold rests on margins measured over seeds (in the comments)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


@pytest.fixture
def scripts():
    """The two scripts as modules, scripts/ on the path only meanwhile (its module names,
    summary.py or train.py, would shadow others')."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import denoise
        import signals

        yield signals, denoise
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def test_temporal_convnet_tells_four_waveforms_apart(scripts):
    """The README's figure: 800 steps, noise 0.2, seed 0. Measured (2-core AVX-512 Xeon):
    97.20% for seed 0 and 94.85-97.20% over seeds 0-4 (chance: 25%); the bound sits 2.85 points
    under the worst seed, so a CPU whose float sums round otherwise stays above it."""
    signals, _ = scripts
    accuracy, _ = signals.run(steps=800, noise=0.2, seed=0, log=None)
    assert accuracy >= 0.92, accuracy


@pytest.mark.skipif(not THOROUGH, reason="a U-Net training run (20 s): the thorough profile; "
                    "the transposed convolution it runs is proven every run")
def test_unet_denoises_mnist_digits(scripts):
    """A short run (120 steps, batch 32, width 8) of scripts/denoise.py's recipe: the test
    images' PSNR rises from the noisy 6.0 dB by 10.8-11.1 dB over seeds 0-2 (measured: 16.89,
    17.12, 16.81 dB); the bound asks for 8 dB. The full run (600 steps, width 16): 6.03 ->
    20.30 dB, docs/denoise.png."""
    _, denoise = scripts
    *_, report = denoise.train(steps=120, noise=0.5, batch=32, width=8, seed=0, log=None)
    assert 5.5 < report["psnr_noisy"] < 6.5, report
    assert report["psnr_denoised"] >= report["psnr_noisy"] + 8.0, report
