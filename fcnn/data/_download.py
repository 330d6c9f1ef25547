"""Finding, fetching and verifying the full datasets' files."""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from pathlib import Path

from fcnn._files import atomic_write, digest
from fcnn.data._formats import DataError

# The MD5s the dataset authors publish (listed with sizes and sources in docs/data.md).
SOURCES = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": ("https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/", {
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    }),
}
CIFAR_MEMBERS = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def data_root(data_dir=None) -> Path:
    return Path(data_dir or os.environ.get("FCNN_DATA") or Path.home() / ".cache" / "fcnn")


def fetch(url: str, path: Path, md5: str, timeout: float = 60.0) -> Path:
    """Download `url` to `path` atomically; refused (nothing written) unless its MD5 is `md5`."""
    h = hashlib.md5()

    def write(f):
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != md5:
            raise DataError(f"{url}: MD5 {h.hexdigest()} does not match the published {md5}; "
                            "the download was discarded.")

    try:
        atomic_write(path, write)
    except OSError as e:
        raise DataError(f"{url}: download failed ({e}).") from None
    return path


def _verified(name, path: Path, md5: str, url: str, download: bool) -> Path:
    if path.is_file():
        if digest(path) == md5:
            return path
        if not download:
            raise DataError(f"{path}: MD5 {digest(path)} does not match the published {md5} "
                            "(truncated or corrupt). Delete it, or pass download=True to fetch "
                            "it again.")
    elif not download:
        raise DataError(f"{name}: {path} is missing. Pass download=True (or --download) to fetch "
                        f"it, or place the official file there; the embedded MNIST subset needs "
                        f"nothing: load('mnist_embedded').")
    return fetch(url, path, md5)


def load_files(name: str, data_dir=None, download: bool = False, mirror: str | None = None):
    """Paths of the dataset's files (CIFAR-10's members extracted), each verified."""
    if name not in SOURCES:
        raise DataError(f"load: unknown dataset {name!r}; expected 'mnist_embedded', "
                        f"{', '.join(repr(n) for n in SOURCES)}.")
    base, files = SOURCES[name]
    base = mirror or base
    folder = data_root(data_dir) / name
    paths = {f: _verified(name, folder / f, md5, base.rstrip("/") + "/" + f, download)
             for f, md5 in files.items()}
    if name == "cifar10":
        paths = _extract_cifar(paths["cifar-10-binary.tar.gz"], folder)
    return paths


def _extract_cifar(archive: Path, folder: Path) -> dict:
    """Extract the six batch files (verified archive; only those members, by name)."""
    out = {m: folder / m for m in CIFAR_MEMBERS}
    stamp = folder / ".extracted-from"
    if all(p.is_file() for p in out.values()) and stamp.is_file() and \
            stamp.read_text() == digest(archive):
        return out
    with tarfile.open(archive, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name, path in out.items():
            if name not in members:
                raise DataError(f"{archive}: member {name} is missing.")
            data = tar.extractfile(members[name]).read()
            atomic_write(path, lambda f, data=data: f.write(data))
    atomic_write(stamp, lambda f: f.write(digest(archive).encode()))
    return out
