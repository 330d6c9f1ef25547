"""ImageNet inference helpers: torchvision's evaluation transform in NHWC, and the class names.

- `preprocess(image)`: torchvision's standard evaluation transform (`Resize(256)`,
  `CenterCrop(224)`, `ToTensor()`, `Normalize(MEAN, STD)`) on a path, a PIL image or a uint8
  array, giving a `(224, 224, 3)` float32 array in fcnn's channels-last layout; it is built
  from `resize_shorter`, `center_crop` and `normalize`, each usable on its own.
- `CLASSES`: the 1000 class names, in class-index order, as torchvision's pretrained weights
  number them (`fcnn/data/imagenet_classes.txt`; where the names come from and their licences:
  `fcnn/data/IMAGENET_CLASSES_LICENSE.txt`).

The resizing and cropping are Pillow's, with torchvision's rules for sizes and offsets, so the
result equals torchvision's on the same image bit for bit (tests/test_imagenet.py). As in
torchvision, an image's EXIF orientation is not applied.
"""

from __future__ import annotations

import importlib.resources
import numbers
import os

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CLASSES", "MEAN", "STD", "center_crop", "normalize", "preprocess",
           "resize_shorter"]

MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet mean, per RGB channel
STD = (0.229, 0.224, 0.225)  # and standard deviation

CLASSES: tuple[str, ...] = tuple(
    importlib.resources.files("fcnn.data").joinpath("imagenet_classes.txt")
    .read_text(encoding="utf-8").splitlines())


def _pil():
    from PIL import Image

    return Image


def _describe(x) -> str:
    if isinstance(x, (np.ndarray, jax.Array)):
        return f"a {x.dtype} array of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"[:200]


def _check_size(size, name: str, where: str) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"fcnn.data.{where}: `{name}` must be an int >= 1, got "
                        f"{_describe(size)}.")
    if size < 1:
        raise ValueError(f"fcnn.data.{where}: `{name}` must be an int >= 1, got {size}.")
    return int(size)


def _image(image, where: str):
    """`image` as a PIL image: a PIL image as is, a uint8 (H, W) or (H, W, 3) array through
    `PIL.Image.fromarray`."""
    Image = _pil()
    expected = "a PIL.Image or a uint8 numpy array of shape (H, W) or (H, W, 3)"
    if where == "preprocess":
        expected = "a path (str or os.PathLike), " + expected
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"fcnn.data.{where}: `image` must be {expected}, got "
                            f"{_describe(image)}.")
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
            raise ValueError(f"fcnn.data.{where}: `image` must be {expected}, got "
                             f"{_describe(image)}.")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"fcnn.data.{where}: `image` must be {expected}, got "
                        f"{_describe(image)}.")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"fcnn.data.{where}: `image` must not be empty, got one of "
                         f"{image.width}x{image.height} (width x height).")
    return image


def normalize(x):
    """`(x - MEAN) / STD` per channel: torchvision's ImageNet normalisation, channels last.

    Args:
      x: a float numpy or jax array `(..., H, W, 3)` (any shape whose last axis is the 3 RGB
        channels), with values in [0, 1].

    Returns:
      An array of the same kind (numpy or jax) and shape: float64 if `x` is float64, float32
      otherwise. MEAN and STD are taken in that dtype, as torchvision does. (On numpy arrays
      the result equals torchvision's bit for bit; XLA may round a jax array's division in the
      last bit.)

    Raises:
      TypeError: `x` not a numpy or jax array, or not floating point.
      ValueError: a last axis other than 3.
    """
    if not isinstance(x, (np.ndarray, jax.Array)):
        raise TypeError(f"fcnn.data.normalize: `x` must be a float numpy or jax array "
                        f"(..., 3), got {_describe(x)}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"fcnn.data.normalize: `x` must be a floating-point array with values "
                        f"in [0, 1], got {_describe(x)}.")
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"fcnn.data.normalize: `x` must have 3 channels on its last axis "
                         f"(..., H, W, 3), got {_describe(x)}.")
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    shape = (1,) * (x.ndim - 1) + (3,)  # explicit ranks: fine under strict rank promotion
    mean = np.asarray(MEAN, dtype).reshape(shape)
    std = np.asarray(STD, dtype).reshape(shape)
    return (x.astype(dtype) - mean) / std


def resize_shorter(image, size: int = 256):
    """Resize so the shorter side is `size`: torchvision's `Resize(size)` on a PIL image.

    The longer side becomes `int(size * long / short)` (truncated, as torchvision computes it),
    and the image is resampled with `PIL.Image.BILINEAR` (antialiased when shrinking, as Pillow
    always is). An image already of that size comes back as a copy.

    Args:
      image: a PIL image, or a uint8 numpy array `(H, W)` or `(H, W, 3)` (through
        `PIL.Image.fromarray`).
      size: the shorter side after resizing, an int >= 1.

    Returns:
      A PIL image.

    Raises:
      TypeError: `image` or `size` of the wrong type (a non-uint8 array included).
      ValueError: an array of another shape, an empty image, or `size` < 1.
    """
    image = _image(image, "resize_shorter")
    size = _check_size(size, "size", "resize_shorter")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) == (w, h):
        return image.copy()
    return image.resize((new_w, new_h), _pil().BILINEAR)


def center_crop(image, size: int = 224):
    """The central `size` x `size` square: torchvision's `CenterCrop(size)` on a PIL image.

    The offsets are `top = int(round((h - size) / 2.0))` and `left` likewise, with Python's
    round (halves to even: a difference of 1 gives 0, of 3 gives 2, of 5 gives 2).
    torchvision pads an image smaller than `size` with zeros; here that is an error.

    Args:
      image: a PIL image, or a uint8 numpy array `(H, W)` or `(H, W, 3)`.
      size: the side of the crop, an int >= 1.

    Returns:
      A PIL image of `size` x `size`.

    Raises:
      TypeError: `image` or `size` of the wrong type (a non-uint8 array included).
      ValueError: an array of another shape, an empty image, `size` < 1, or an image smaller
        than `size` on either side.
    """
    image = _image(image, "center_crop")
    size = _check_size(size, "size", "center_crop")
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"fcnn.data.center_crop: `image` must be at least {size}x{size} "
                         f"(the crop `size`), got one of {w}x{h} (width x height).")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess(image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """torchvision's ImageNet evaluation transform, channels last.

    `Resize(resize)`, `CenterCrop(crop)`, `ToTensor()` (uint8 / 255 in float32) and
    `Normalize(MEAN, STD)`, giving an HWC array instead of torchvision's CHW tensor: add a
    batch axis (`x[None]`) for a model.

    Args:
      image: a path (str or os.PathLike) opened with PIL, a PIL image, or a uint8 numpy array
        `(H, W)` or `(H, W, 3)`; converted to RGB first (greyscale repeated, alpha dropped).
      resize: the shorter side after resizing (`resize_shorter`).
      crop: the side of the central square (`center_crop`), at most `resize`.

    Returns:
      A float32 numpy array `(crop, crop, 3)`.

    Raises:
      TypeError: `image`, `resize` or `crop` of the wrong type.
      ValueError: an array of another shape, an empty image, sizes < 1, or `crop` > `resize`.
      OSError: a path that cannot be opened or read as an image (Pillow's error).
    """
    resize = _check_size(resize, "resize", "preprocess")
    crop = _check_size(crop, "crop", "preprocess")
    if crop > resize:
        raise ValueError(f"fcnn.data.preprocess: `crop` must be at most `resize` ({resize}), "
                         f"got {crop}.")
    if isinstance(image, (str, os.PathLike)):
        with _pil().open(image) as opened:
            rgb = opened.convert("RGB")
    else:
        rgb = _image(image, "preprocess").convert("RGB")
    rgb = center_crop(resize_shorter(rgb, resize), crop)
    x = np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255)
    return normalize(x)
