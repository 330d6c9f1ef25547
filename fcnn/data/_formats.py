"""Readers for the IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary formats.

Both validate before trusting a byte: magic number, dimensions, and that the payload is exactly
as long as the header says. A truncated, padded or corrupt file raises `DataError` naming the
file and what is wrong; nothing is silently cut.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_RECORD = 1 + 3 * 32 * 32


class DataError(ValueError):
    """A data file that is missing, truncated, corrupt or not what its name says."""


def _read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip stream ({e}).") from None
    return raw


def check_finite(images, name: str, where: str) -> None:
    """Refuse floating-point `images` holding NaN or ±inf, naming `where` (the caller), `name`
    (the array) and the first bad index; integer images pass (they cannot hold either). One
    pass over the array, before any step runs.

    Raises:
      DataError (a ValueError): the first non-finite element and how many there are.
    """
    a = np.asarray(images)
    if not np.issubdtype(a.dtype, np.floating):
        return
    finite = np.isfinite(a)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    first = tuple(int(i) for i in bad[0])
    raise DataError(f"{where}: `{name}` must hold finite values, got {a[first]} at index "
                    f"{first} ({len(bad)} non-finite of {a.size}). Clean or drop those images "
                    "first: one NaN pixel makes every gradient NaN.")


def read_idx(path, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (`.gz` or raw) into an array of its declared type and shape.

    Raises:
      DataError: bad magic, unexpected rank, or a payload shorter or longer than the header
        declares.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}).")
    ndim = data[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: expected an IDX file of rank {expect_ndim} "
                        f"(magic 0x0000080{expect_ndim}), got rank {ndim}.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes, need {header}).")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header declares {dims} -> {expected} bytes, "
                        f"file has {len(data)}.")
    out = np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
    check_finite(out, "data", f"read_idx({path})")  # IDX may hold float32 or float64 values
    return out


def read_idx_pair(images_path, labels_path, num_classes: int = 10):
    """Images `(N, H, W, 1)` uint8 and labels `(N,)` int32 from two IDX files, checked to agree."""
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} has {images.shape[0]} images but {labels_path} has "
                        f"{labels.shape[0]} labels.")
    if labels.size and labels.max() >= num_classes:
        top = int(labels.max())
        raise DataError(f"{labels_path}: label {top} is outside 0..{num_classes - 1}.")
    return images[..., None], labels.astype(np.int32)


def read_cifar10(path):
    """A CIFAR-10 binary batch (`data_batch_*.bin`, `test_batch.bin`): records of 1 label byte
    and 3072 pixel bytes (1024 R, 1024 G, 1024 B, each 32x32 row-major).

    Returns:
      images `(N, 32, 32, 3)` uint8 (NHWC) and labels `(N,)` int32.
    """
    path = Path(path)
    data = _read_bytes(path)
    if not data or len(data) % CIFAR_RECORD:
        raise DataError(f"{path}: {len(data)} bytes is not a whole number of {CIFAR_RECORD}-byte "
                        "CIFAR-10 records (truncated or not a CIFAR-10 binary batch).")
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int32)
    if labels.max() > 9:
        raise DataError(f"{path}: label byte {int(labels.max())} is outside 0..9 "
                        "(corrupt, or not CIFAR-10).")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels
