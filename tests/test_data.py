"""fcnn.data: the embedded MNIST, IDX/CIFAR readers refusing bad files, batches, the
downloader against a local HTTP server (no test touches the internet)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from fcnn import data
from fcnn._files import atomic_write
from fcnn.data import _download


def test_embedded_mnist_is_the_published_data():
    ds = data.load()
    assert ds.train_images.shape == (5000, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28, 1) and ds.test_labels.dtype == np.int32
    # docs/data.md's decoding check: test labels per digit, pixel mean 33.79; 500 per digit
    assert np.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                    974, 1009]
    assert round(float(ds.test_images.mean()), 2) == 33.79
    assert np.bincount(ds.train_labels).tolist() == [500] * 10


def _idx(array: np.ndarray, code=0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(">u1" if code == 0x08 else ">i4").tobytes()


def test_idx_round_trip_gz_and_raw(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], np.uint8)
    (tmp_path / "x.gz").write_bytes(gzip.compress(_idx(images)))
    (tmp_path / "y").write_bytes(_idx(labels))
    x, y = data.read_idx_pair(tmp_path / "x.gz", tmp_path / "y")
    assert x.shape == (2, 3, 4, 1) and np.array_equal(x[..., 0], images)
    assert y.tolist() == [7, 1] and y.dtype == np.int32
    ints = np.array([[1, -2], [300, 4]], np.int32)
    (tmp_path / "i").write_bytes(_idx(ints, 0x0C))
    assert np.array_equal(data.read_idx(tmp_path / "i"), ints)


@pytest.mark.parametrize("mangle,pattern", [
    (lambda b: b[:-1], r"truncated: header declares \(2, 3, 4\) -> 40 bytes, file has 39"),
    (lambda b: b + b"\0", r"has trailing bytes"),
    (lambda b: b"\x00\x00\x08"[:2] + b"\x07\x03" + b[4:], r"not an IDX file \(magic bytes"),
    (lambda b: b[:10], r"truncated header"),
    (lambda b: gzip.compress(b)[:-8], r"corrupt or truncated gzip stream"),
])
def test_bad_idx_files_are_refused(tmp_path, mangle, pattern):
    path = tmp_path / "images.idx"
    path.write_bytes(mangle(_idx(np.zeros((2, 3, 4), np.uint8))))
    with pytest.raises(data.DataError, match=str(path).replace(".", r"\.") + ": " + pattern):
        data.read_idx(path, expect_ndim=3)


def test_idx_pairs_must_agree(tmp_path):
    (tmp_path / "x").write_bytes(_idx(np.zeros((3, 2, 2), np.uint8)))
    (tmp_path / "y").write_bytes(_idx(np.zeros(2, np.uint8)))
    with pytest.raises(data.DataError, match="has 3 images but .* has 2 labels"):
        data.read_idx_pair(tmp_path / "x", tmp_path / "y")
    (tmp_path / "y").write_bytes(_idx(np.array([1, 10, 2], np.uint8)))
    with pytest.raises(data.DataError, match=r"label 10 is outside 0\.\.9"):
        data.read_idx_pair(tmp_path / "x", tmp_path / "y")
    with pytest.raises(data.DataError, match="expected an IDX file of rank 1"):
        data.read_idx_pair(tmp_path / "x", tmp_path / "x")


def test_cifar10_records(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)  # N, CHW
    records = np.concatenate([np.array([[4], [0], [9]], np.uint8), pixels.reshape(3, -1)], 1)
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(records.tobytes())
    x, y = data.read_cifar10(path)
    assert x.shape == (3, 32, 32, 3) and y.tolist() == [4, 0, 9]
    assert np.array_equal(x[1, 5, 7], pixels[1, :, 5, 7])  # R, G, B of row 5, col 7
    path.write_bytes(records.tobytes()[:-100])
    with pytest.raises(data.DataError, match="not a whole number of 3073-byte"):
        data.read_cifar10(path)
    records[0, 0] = 12
    path.write_bytes(records.tobytes())
    with pytest.raises(data.DataError, match=r"label byte 12 is outside 0\.\.9"):
        data.read_cifar10(path)


def test_batches_seeded_complete_and_scaled():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * 25
    labels = np.arange(10, dtype=np.int32)
    first = list(data.batches(images, labels, 4, seed=3, epoch=1))
    again = list(data.batches(images, labels, 4, seed=3, epoch=1))
    other = list(data.batches(images, labels, 4, seed=3, epoch=2))
    assert [len(y) for _, y in first] == [4, 4, 2]  # the partial batch is kept
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other, strict=True))
    assert sorted(np.concatenate([y for _, y in first]).tolist()) == list(range(10))
    x, y = first[0]
    assert x.dtype == np.float32 and np.allclose(x[:, 0, 0, 0], images[y, 0, 0, 0] / 255)
    assert [len(y) for _, y in data.batches(images, labels, 4, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batches: 10 images but 9 labels"):
        next(data.batches(images, labels[:9], 4))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f"
    atomic_write(path, lambda f: f.write(b"old"))

    def crash(f):
        f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary left behind


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _mnist_fixture(www, n=6):
    rng = np.random.default_rng(1)
    files = {}
    for prefix in ("train", "t10k"):
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(
            _idx(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(
            _idx(rng.integers(0, 10, n).astype(np.uint8)))
    for name, blob in files.items():
        (www / name).write_bytes(blob)
    return {name: hashlib.md5(blob).hexdigest() for name, blob in files.items()}


def test_download_verifies_and_loads(server, tmp_path, monkeypatch):
    www, url = server
    md5s = _mnist_fixture(www)
    monkeypatch.setitem(_download.SOURCES, "mnist", ("https://unused.invalid/", md5s))
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match="is missing. Pass download=True"):
        data.load("mnist", data_dir=cache)
    ds = data.load("mnist", data_dir=cache, download=True, mirror=url)
    assert ds.train_images.shape == (6, 28, 28, 1) and ds.test_labels.shape == (6,)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(md5s)
    (www / "train-images-idx3-ubyte.gz").unlink()  # now served from the cache only
    assert np.array_equal(data.load("mnist", data_dir=cache).train_images, ds.train_images)


def test_corrupted_download_is_refused_and_never_written(server, tmp_path, monkeypatch):
    www, url = server
    md5s = _mnist_fixture(www)
    monkeypatch.setitem(_download.SOURCES, "mnist", ("https://unused.invalid/", md5s))
    blob = (www / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (www / "t10k-labels-idx1-ubyte.gz").write_bytes(blob[:-3] + b"xyz")  # tampered in transit
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte\.gz: MD5 .* does not match "
                                             r"the published .*; the download was discarded"):
        data.load("mnist", data_dir=cache, download=True, mirror=url)
    assert not (cache / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (cache / "mnist").iterdir() if p.name.endswith(".tmp")]


def test_a_cached_file_failing_its_checksum_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNN_DATA", str(tmp_path))
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte\.gz: MD5 .* does not match "
                                             r"the published f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        data.load("mnist")
    with pytest.raises(data.DataError, match="unknown dataset 'svhn'"):
        data.load("svhn")
