"""fcnn.augment.random_shift: each image is its own translate by an offset in range, zero-filled."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fcnn import augment


def _shifted(image, dy, dx):
    """`image` moved down dy and right dx pixels, zero fill (numpy, by hand)."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = \
        image[max(-dy, 0): h - max(dy, 0), max(-dx, 0): w - max(dx, 0)]
    return out


def test_each_image_is_a_translate_within_max_shift():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (32, 7, 9, 2)).astype(np.float32)  # no zeros: shifts are unique
    out = np.asarray(augment.random_shift(jax.random.key(3), x, 2))
    offsets = []
    for image, moved in zip(x, out):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(moved, _shifted(image, dy, dx))]
        assert len(found) == 1
        offsets += found
    assert len(set(offsets)) > 10  # independent offsets per image (25 possible)


def test_zero_shift_is_identity_and_bad_input_is_named():
    x = np.ones((2, 4, 4, 1), np.float32)
    assert augment.random_shift(jax.random.key(0), x, 0) is x
    with pytest.raises(ValueError, match=r"random_shift: `x` must be an \(N, H, W, C\) batch"):
        augment.random_shift(jax.random.key(0), x[0], 1)
    with pytest.raises(ValueError, match=r"random_shift: `x` must be an \(N, H, W, C\) batch"):
        augment.random_shift(jax.random.key(0), x[0], 0)
