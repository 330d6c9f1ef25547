"""Training: the step, checkpoints that refuse bad files, and the main job (metrics, plot,
bit-exact resume after kill -9, divergence guard)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fcnn import checkpoint, data, train
from fcnn import layers as L

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]


def _tiny():
    model = L.serial(L.Conv2D(4, 3), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dropout(0.2),
                     L.Dense(10))
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    return model, params


def test_step_learns_and_is_pure():
    model, params = _tiny()
    ds = data.load()
    x, y = next(data.batches(ds.train_images, ds.train_labels, 64, seed=1))
    opt = optax.sgd(0.1, momentum=0.9)
    step = train.make_step(model, opt, weight_decay=1e-3, max_shift=1)
    state = opt.init(params)
    a = step(params, state, x, y, jax.random.key(5))
    b = step(params, state, x, y, jax.random.key(5))
    assert train.params_sha256(a[0]) == train.params_sha256(b[0])  # same inputs, same result
    first = float(a[2]["loss"])
    p, s = params, state
    for i in range(30):
        p, s, m = step(p, s, x, y, jax.random.key(i))
    # last / first loss over seeds 0-9 (init key, batch, dropout keys): 0.040-0.112 (0.065 as
    # here), within 2e-7 with other CPU kernels (XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=)
    assert float(m["loss"]) < 0.5 * first and set(m) == {"loss", "accuracy"}


def test_weight_decay_is_l2_on_weights_only():
    _, params = _tiny()
    want = sum(0.5 * float(jnp.sum(p["w"] ** 2)) for p in params if "w" in p)
    np.testing.assert_allclose(float(train.l2_penalty(params)), want, rtol=1e-6)


def test_evaluate_counts_every_image():
    model, params = _tiny()
    ds = data.load()
    loss, acc = train.make_evaluate(model, batch_size=300)(params, ds.test_images[:1000],
                                                           ds.test_labels[:1000])
    logits = model.apply(params, ds.test_images[:1000].astype(np.float32) / 255)
    np.testing.assert_allclose(acc, float(jnp.mean(jnp.argmax(logits, -1) ==
                                                   ds.test_labels[:1000])))
    assert loss > 0


def _state():
    model, params = _tiny()
    opt = optax.adam(1e-3)
    return dict(params=params, opt_state=opt.init(params), key=jax.random.key(7))


def test_checkpoint_round_trip(tmp_path):
    tree = _state()
    checkpoint.save(tmp_path / "c.npz", tree, step=12, epoch=3, metadata={"note": "x"})
    restored, info = checkpoint.restore(tmp_path / "c.npz", tree)
    assert info == dict(step=12, epoch=3, metadata={"note": "x"})
    assert train.params_sha256(restored["params"]) == train.params_sha256(tree["params"])
    assert np.array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(tree["key"]))
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(tree)
    assert b"pickle" not in (tmp_path / "c.npz").read_bytes()


def test_checkpoint_refuses_truncated_tampered_and_mismatched(tmp_path):
    tree = _state()
    path = tmp_path / "c.npz"
    checkpoint.save(path, tree)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="unreadable checkpoint"):
        checkpoint.restore(path, tree)
    path.write_bytes(blob)
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files}
    entries["leaf_00000"] = entries["leaf_00000"] + 1  # edited, meta (and its digest) kept
    np.savez(path, **entries)
    with pytest.raises(checkpoint.CheckpointError, match="do not match their recorded SHA-256"):
        checkpoint.restore(path, tree)
    checkpoint.save(path, tree)
    with pytest.raises(checkpoint.CheckpointError, match="does not match the template"):
        checkpoint.restore(path, dict(params=tree["params"]))


def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    tree = _state()
    path = tmp_path / "c.npz"
    checkpoint.save(path, tree, epoch=1)
    before = path.read_bytes()

    def dies(f, **entries):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", dies)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, tree, epoch=2)
    assert path.read_bytes() == before
    assert checkpoint.restore(path, tree)[1]["epoch"] == 1


def _run(*args, check=True):
    out = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=600)
    if check and out.returncode:
        raise AssertionError(out.stdout + out.stderr)
    return out


def test_main_job_writes_metrics_and_plot(tmp_path):
    out = _run("--epochs", "2", "--metrics", str(tmp_path / "m.json"),
               "--plot", str(tmp_path / "c.png"))
    m = json.loads((tmp_path / "m.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    # 2 epochs of the main job, --seed 0-5: 88.7-95.9% (94.3% at seed 0, as here; 94.4% with
    # other CPU kernels, XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=); the floor is 8.7
    # points under the lowest (seed 5, whose initialisation stalls at 42.5% after one epoch).
    assert 0.8 < m["test_accuracy"] <= 1 and m["images_per_second"] > 0 and m["wall_seconds"] > 0
    assert len(m["params_sha256"]) == 64 and "test accuracy" in out.stdout
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_after_kill_9_is_bit_exact(tmp_path):
    common = ["--epochs", "3", "--batch-size", "128"]
    _run(*common, "--metrics", str(tmp_path / "straight.json"))
    straight = json.loads((tmp_path / "straight.json").read_text())["params_sha256"]

    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen([*TRAIN, *common, "--checkpoint-dir", str(ckpt)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ckpt / "checkpoint.npz").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: after epoch 1's checkpoint, before the end
    proc.wait()
    with np.load(ckpt / "checkpoint.npz") as z:
        saved_epoch = json.loads(z["meta"].tobytes().decode())["epoch"]
    assert 1 <= saved_epoch < 3  # it really was interrupted mid-run
    out = _run(*common, "--checkpoint-dir", str(ckpt), "--resume",
               "--metrics", str(tmp_path / "resumed.json"))
    assert "resumed from" in out.stdout
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["params_sha256"] == straight
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    _run("--epochs", "1", "--checkpoint-dir", str(ckpt))
    good = (ckpt / "checkpoint.npz").read_bytes()
    out = _run("--epochs", "2", "--lr", "1e6", "--checkpoint-dir", str(ckpt), "--resume",
               check=False)
    assert out.returncode == 3
    assert "diverged: loss is" in out.stderr and "at step" in out.stderr
    assert (ckpt / "checkpoint.npz").read_bytes() == good
