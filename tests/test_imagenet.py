"""fcnn.data.imagenet: the class names, torchvision's evaluation transform (sizes, offsets and
values, bit for bit), the error messages, and scripts/classify.py's printing."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fcnn import data
from fcnn.data import imagenet

ROOT = Path(__file__).resolve().parents[1]


def random_image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def coordinates(w, h):
    """A uint8 image whose red channel is the row and green channel the column (w, h < 256)."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)


def reference(image, resize=256, crop=224):
    """The evaluation transform written out independently with PIL and numpy."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    if (nw, nh) != (w, h):
        rgb = rgb.resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - crop) / 2)), int(round((nw - crop) / 2))
    a = np.asarray(rgb)[top: top + crop, left: left + crop].astype(np.float32) / np.float32(255)
    out = np.empty_like(a)
    for c in range(3):
        out[..., c] = (a[..., c] - np.float32(imagenet.MEAN[c])) / np.float32(imagenet.STD[c])
    return out


# ---- class names


def test_classes_are_1000_unique_names_in_torchvision_order():
    assert isinstance(data.CLASSES, tuple) and data.CLASSES is imagenet.CLASSES
    assert len(data.CLASSES) == 1000 == len(set(data.CLASSES))
    assert all(name and name == name.strip() for name in data.CLASSES)
    known = {0: "tench", 1: "goldfish", 2: "great white shark", 207: "golden retriever",
             281: "tabby", 285: "Egyptian cat", 340: "zebra", 954: "banana",
             999: "toilet tissue"}
    for index, name in known.items():
        assert data.CLASSES[index] == name


def test_packaged_files_are_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"imagenet_classes.txt"' in text and '"IMAGENET_CLASSES_LICENSE.txt"' in text
    licence = (ROOT / "fcnn" / "data" / "IMAGENET_CLASSES_LICENSE.txt").read_text()
    assert "BSD 3-Clause" in licence and "Princeton University" in licence


# ---- normalize


def test_normalize_against_hand_computed_values():
    x = np.array([[0.485, 0.456, 0.406], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    expected = np.array([[0.0, 0.0, 0.0],
                         [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225],  # 2.2489, 2.4286, 2.64
                         [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]])
    np.testing.assert_allclose(expected[1], [2.2489083, 2.4285714, 2.64], rtol=1e-7)
    out64 = data.normalize(x)
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, expected, rtol=1e-12, atol=1e-15)
    for dtype in (np.float32, np.float16):
        out = data.normalize(x.astype(dtype))
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-6 if dtype == np.float32 else 1e-3,
                                   atol=1e-6 if dtype == np.float32 else 1e-3)


def test_normalize_on_jax_arrays_matches_numpy():
    x = np.random.default_rng(1).random((2, 3, 4, 3)).astype(np.float32)
    out = data.normalize(jnp.asarray(x))
    assert isinstance(out, type(jnp.zeros(1))) and out.dtype == jnp.float32
    # XLA may divide by a constant as a multiplication by its reciprocal: a last-bit difference
    np.testing.assert_allclose(np.asarray(out), data.normalize(x), rtol=3e-7, atol=3e-7)


# ---- resize_shorter and center_crop


@pytest.mark.parametrize("size_in, size, size_out", [
    ((500, 375), 256, (341, 256)),    # landscape: int(256 * 500 / 375) = int(341.33)
    ((375, 500), 256, (256, 341)),    # portrait
    ((300, 300), 256, (256, 256)),    # square
    ((257, 999), 256, (256, 995)),    # int(256 * 999 / 257) = int(995.11)
    ((640, 480), 256, (341, 256)),
    ((100, 30), 50, (166, 50)),       # enlarging: int(50 * 100 / 30) = int(166.67)
])
def test_resize_shorter_sizes(size_in, size, size_out):
    out = data.resize_shorter(random_image(*size_in), size)
    assert isinstance(out, Image.Image) and out.size == size_out


def test_resize_shorter_takes_arrays_and_copies_an_image_of_the_right_size():
    arr = np.asarray(random_image(40, 30))
    assert data.resize_shorter(arr, 15).size == (20, 15)
    assert data.resize_shorter(arr[..., 0], 15).mode == "L"
    image = random_image(30, 20)
    same = data.resize_shorter(image, 20)
    assert same is not image and np.array_equal(np.asarray(same), np.asarray(image))
    np.testing.assert_array_equal(np.asarray(data.resize_shorter(image, 10)),
                                  np.asarray(image.resize((15, 10), Image.BILINEAR)))


@pytest.mark.parametrize("w, h, size, left, top", [
    (6, 6, 4, 1, 1),
    (7, 5, 4, 2, 0),      # width difference 3 -> round(1.5) = 2; height difference 1 -> 0
    (11, 9, 4, 4, 2),     # 7 -> round(3.5) = 4; 5 -> round(2.5) = 2 (halves to even)
    (4, 4, 4, 0, 0),
    (230, 225, 224, 3, 0),
])
def test_center_crop_offsets(w, h, size, left, top):
    out = np.asarray(data.center_crop(coordinates(w, h), size))
    assert out.shape == (size, size, 3)
    assert out[0, 0, 0] == top and out[0, 0, 1] == left
    np.testing.assert_array_equal(out, coordinates(w, h)[top: top + size, left: left + size])


# ---- preprocess


SHAPES = [(500, 375), (375, 500), (256, 256), (300, 300), (257, 999), (225, 231)]


@pytest.mark.parametrize("w, h", SHAPES)
def test_preprocess_matches_an_independent_computation(w, h):
    image = random_image(w, h, seed=w * h)
    out = data.preprocess(image)
    assert out.dtype == np.float32 and out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, reference(image))


def test_preprocess_converts_modes_and_reads_paths(tmp_path):
    for mode in ("L", "RGBA", "P"):
        image = random_image(260, 300, mode=mode)
        np.testing.assert_array_equal(data.preprocess(image), reference(image))
    image = random_image(320, 240, seed=3)
    path = tmp_path / "image.png"
    image.save(path)
    expected = reference(image)
    np.testing.assert_array_equal(data.preprocess(path), expected)
    np.testing.assert_array_equal(data.preprocess(str(path)), expected)
    np.testing.assert_array_equal(data.preprocess(np.asarray(image)), expected)
    small = data.preprocess(image, resize=32, crop=28)
    np.testing.assert_array_equal(small, reference(image, 32, 28))


def test_preprocess_equals_torchvision_bit_for_bit():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(imagenet.MEAN, imagenet.STD)])
    for w, h in SHAPES:
        for mode in ("RGB", "L"):
            image = random_image(w, h, seed=w + h, mode=mode)
            expected = transform(image.convert("RGB")).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(data.preprocess(image), expected)


# ---- errors


def test_error_messages():
    image = random_image(100, 80)

    def raises(exc, pattern, fn, *args, **kwargs):
        with pytest.raises(exc, match="^" + pattern):
            fn(*args, **kwargs)

    raises(TypeError, re.escape("fcnn.data.normalize: `x` must be a float numpy or jax array")
           + ".*got list", data.normalize, [0.1, 0.2, 0.3])
    raises(TypeError, r"fcnn\.data\.normalize: `x` must be a floating-point.*got a uint8 array",
           data.normalize, np.zeros((2, 2, 3), np.uint8))
    raises(ValueError, r"fcnn\.data\.normalize: `x` must have 3 channels.*\(2, 2, 4\)",
           data.normalize, np.zeros((2, 2, 4), np.float32))
    raises(ValueError, r"fcnn\.data\.normalize: .*shape \(\)", data.normalize,
           np.ones((), np.float32))
    raises(TypeError, r"fcnn\.data\.resize_shorter: `image` must be a PIL\.Image or a uint8 "
           r".*got str 'x\.png'", data.resize_shorter, "x.png")
    raises(TypeError, r"fcnn\.data\.resize_shorter: `image` .*uint8.*got a float32 array",
           data.resize_shorter, np.zeros((4, 4, 3), np.float32))
    raises(ValueError, r"fcnn\.data\.resize_shorter: `image` .*\(H, W, 3\), got a uint8 array "
           r"of shape \(4, 4, 4\)", data.resize_shorter, np.zeros((4, 4, 4), np.uint8))
    raises(ValueError, r"fcnn\.data\.resize_shorter: `image` must not be empty.*0x5",
           data.resize_shorter, np.zeros((5, 0, 3), np.uint8))
    raises(ValueError, r"fcnn\.data\.resize_shorter: `size` must be an int >= 1, got 0",
           data.resize_shorter, image, 0)
    raises(TypeError, r"fcnn\.data\.resize_shorter: `size` must be an int >= 1, got float 2\.5",
           data.resize_shorter, image, 2.5)
    raises(TypeError, r"fcnn\.data\.resize_shorter: `size` .*got bool True",
           data.resize_shorter, image, True)
    raises(ValueError, r"fcnn\.data\.center_crop: `image` must be at least 224x224 .*got one "
           r"of 100x80", data.center_crop, image)
    raises(ValueError, r"fcnn\.data\.center_crop: `image` .*\(H, W, 3\), got a uint8 array of "
           r"shape \(4, 4, 1\)", data.center_crop, np.zeros((4, 4, 1), np.uint8))
    raises(TypeError, r"fcnn\.data\.center_crop: `size` must be an int", data.center_crop,
           image, "224")
    raises(ValueError, r"fcnn\.data\.preprocess: `crop` must be at most `resize` \(200\), "
           r"got 224", data.preprocess, image, resize=200)
    raises(ValueError, r"fcnn\.data\.preprocess: `resize` must be an int >= 1, got -1",
           data.preprocess, image, resize=-1)
    raises(TypeError, r"fcnn\.data\.preprocess: `image` must be a path \(str or os\.PathLike\)"
           r".*got float 3\.0", data.preprocess, 3.0)
    raises(ValueError, r"fcnn\.data\.preprocess: `image` must not be empty",
           data.preprocess, np.zeros((0, 5), np.uint8))


# ---- scripts/classify.py


class StubModel:
    """Logits: the mean colour of the image times a fixed (3, 1000) matrix."""

    def __init__(self):
        self.w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 1000)), jnp.float32)

    def apply_with_state(self, params, state, x, *, train=False):
        assert not train and x.shape[1:] == (224, 224, 3)
        return jnp.mean(x, axis=(1, 2)) @ (params["scale"] * self.w), state


def test_classify_script_prints_top_classes(tmp_path, monkeypatch, capsys):
    script = runpy.run_path(str(ROOT / "scripts" / "classify.py"))
    paths = []
    for i, (w, h) in enumerate([(300, 240), (240, 260)]):
        paths.append(tmp_path / f"im{i}.png")
        random_image(w, h, seed=i).save(paths[-1])
    model, params, state = StubModel(), {"scale": jnp.float32(40.0)}, {"bn": jnp.zeros(2)}
    calls = []

    def load(name, path):
        calls.append((name, path))
        return model, params, state

    from fcnn import weights

    monkeypatch.setattr(weights, "load", load)
    results = script["main"](["--weights", str(tmp_path / "w.safetensors"), "--top", "3",
                              *map(str, paths)])
    assert calls == [("resnet50", tmp_path / "w.safetensors")]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 4
    for k, path in enumerate(paths):
        x = data.preprocess(path)
        logits = np.asarray(model.apply_with_state(params, state, x[None])[0][0], np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:3]
        assert lines[4 * k] == str(path)
        assert lines[4 * k + 1: 4 * k + 4] == [
            f"  {probs[i]:6.2%}  {i:4d}  {data.CLASSES[i]}" for i in top]
        assert [i for i, _ in results[str(path)]] == list(top)
    assert script["top_lines"](np.array([0.25, 0.75]), 5) == ["  75.00%     1", "  25.00%     0"]
