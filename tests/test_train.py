"""Training: the step, checkpoints that refuse bad files and other configurations, `fit`
(bit-exact resume, the divergence guard, hooks) and the main job (metrics, plot, resume after
kill -9, refusals named by flag)."""

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
    assert float(m["loss"]) < 0.5 * first and set(m) == {"loss", "accuracy", "grad_norm"}


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
    assert info == dict(step=12, epoch=3, config={}, metadata={"note": "x"})
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


def _small():
    """256 training and 100 test digits: 4 steps per epoch at batch 64."""
    full = data.load()
    return data.Dataset(full.train_images[:256], full.train_labels[:256],
                        full.test_images[:100], full.test_labels[:100])


def test_checkpoint_refuses_another_configuration_naming_each_difference(tmp_path):
    tree = _state()
    path = tmp_path / "c.npz"
    checkpoint.save(path, tree, config=dict(lr=0.05, epochs=1, model="lenet5", shape=(28, 1)))
    assert checkpoint.restore(path, tree, config=dict(lr=0.05, epochs=1, model="lenet5",
                                                       shape=[28, 1]))[1]["epoch"] == 0
    with pytest.raises(checkpoint.ConfigMismatch) as e:
        checkpoint.restore(path, tree, config=dict(lr=0.1, epochs=2, model="lenet5", seed=3))
    assert e.value.differences == [("lr", 0.05, 0.1), ("epochs", 1, 2), ("seed", None, 3),
                                   ("shape", [28, 1], None)]
    assert "lr: checkpoint 0.05, now 0.1" in str(e.value)
    assert checkpoint.read_info(path)["config"]["model"] == "lenet5"


def test_fit_resumed_equals_straight_and_refuses_another_recipe(tmp_path):
    model, ds = _tiny()[0], _small()
    recipe = train.Recipe(epochs=3, batch_size=64)
    straight = train.fit(model, ds, recipe)
    assert [h["epoch"] for h in straight.history] == [1, 2, 3] and straight.step == 12

    class Stop(Exception):
        pass

    def stop_after_2(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):  # interrupted after epoch 2's checkpoint
        train.fit(model, ds, recipe, checkpoint_dir=tmp_path, on_epoch=stop_after_2)
    with pytest.raises(train.CheckpointExists, match="already holds a checkpoint; pass "
                       "resume=True") as occupied:
        train.fit(model, ds, recipe, checkpoint_dir=tmp_path)
    assert occupied.value.path == tmp_path / "checkpoint.npz"
    with pytest.raises(checkpoint.ConfigMismatch) as e:
        train.fit(model, ds, train.Recipe(epochs=4, batch_size=64, lr=0.1),
                  checkpoint_dir=tmp_path, resume=True)
    assert e.value.differences == [("epochs", 3, 4), ("lr", 0.05, 0.1)]
    with pytest.raises(checkpoint.ConfigMismatch, match="architecture"):
        train.fit(L.serial(L.Flatten(), L.Dense(10)), ds, recipe, checkpoint_dir=tmp_path,
                  resume=True)
    steps = []
    resumed = train.fit(model, ds, recipe, checkpoint_dir=tmp_path, resume=True,
                        on_step=steps.append)
    assert resumed.params_sha256 == straight.params_sha256 and resumed.step == 12
    assert resumed.history == straight.history
    assert [(p.epoch, p.step, p.seen) for p in steps] == [(3, 9, 64), (3, 10, 128),
                                                         (3, 11, 192), (3, 12, 256)]


def test_fit_and_load_params_refuse_what_does_not_fit(tmp_path, monkeypatch):
    model, ds = _tiny()[0], _small()
    with pytest.raises(ValueError, match="fit: resume=True needs a checkpoint_dir"):
        train.fit(model, ds, train.Recipe(epochs=1), resume=True)
    with pytest.raises(ValueError, match="fit: `describe` may not redefine the recorded entries "
                                         r"\['lr'\]"):
        train.fit(model, ds, train.Recipe(epochs=1), describe=dict(lr=1.0))
    train.fit(model, ds, train.Recipe(epochs=1, optimizer="adam"), checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.npz"
    reads = []
    monkeypatch.setattr(checkpoint, "_read", lambda p, read=checkpoint._read: reads.append(p)
                        or read(p))
    assert jax.tree_util.tree_structure(train.load_params(path, model)) == \
        jax.tree_util.tree_structure(_tiny()[1])  # an adam checkpoint, read without its recipe
    assert reads == [path]  # read and hashed once
    with pytest.raises(checkpoint.CheckpointError, match="saved for another model"):
        train.load_params(path, L.serial(L.Conv2D(4, 3), L.Flatten(), L.Dense(10)))
    state = _state()  # a checkpoint with no configuration (an older fcnn's) is not resumed
    checkpoint.save(tmp_path / "old.npz", state)
    with pytest.raises(checkpoint.CheckpointError, match="records no configuration"):
        checkpoint.restore(tmp_path / "old.npz", state, config=dict(lr=0.05))


def test_fit_from_given_params_records_them(tmp_path):
    model, ds = _tiny()[0], _small()
    first = train.fit(model, ds, train.Recipe(epochs=1), checkpoint_dir=tmp_path / "a")
    params = train.load_params(tmp_path / "a" / "checkpoint.npz", model)
    assert train.params_sha256(params) == first.params_sha256
    second = train.fit(model, ds, train.Recipe(epochs=1, lr=0.01), params=params,
                       checkpoint_dir=tmp_path / "b")
    assert second.params_sha256 != first.params_sha256
    config = checkpoint.read_info(tmp_path / "b" / "checkpoint.npz")["config"]
    assert config["init"] == f"params sha256 {first.params_sha256}" and config["lr"] == 0.01


def test_divergence_stops_before_the_bad_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model, ds = _tiny()[0], _small()
    recipe = train.Recipe(epochs=2, batch_size=64)

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(model, ds, recipe, checkpoint_dir=tmp_path, on_epoch=stop)
    path = tmp_path / "checkpoint.npz"
    # The epoch-1 checkpoint with parameters that overflow the logits (same configuration, so
    # resumable): the next step's loss is not finite.
    opt = recipe.optimizer_for(4)
    _, params = _tiny()
    template = dict(params=params, opt_state=opt.init(params), key=jax.random.key(0))
    state, info = checkpoint.restore(path, template)
    state["params"] = jax.tree_util.tree_map(lambda p: p * 1e30, state["params"])
    checkpoint.save(path, state, step=info["step"], epoch=info["epoch"], config=info["config"],
                    metadata=info["metadata"])
    good = path.read_bytes()
    with pytest.raises(train.Diverged, match=r"at step 4 \(epoch 2\).*last good checkpoint") as e:
        train.fit(model, ds, recipe, checkpoint_dir=tmp_path, resume=True)
    assert not np.isfinite(e.value.loss) and (e.value.step, e.value.epoch) == (4, 2)
    assert train.params_sha256(e.value.params) == train.params_sha256(state["params"])
    assert path.read_bytes() == good


def test_recipe_validates_and_is_the_main_job():
    r = train.Recipe()
    assert (r.epochs, r.batch_size, r.optimizer, r.lr, r.weight_decay, r.max_shift, r.dtype,
            r.seed) == (30, 64, "sgd", 0.05, 5e-4, 2, "float32", 0)
    with pytest.raises(ValueError, match="Recipe: `optimizer` must be one of sgd, adam, adamw"):
        train.Recipe(optimizer="lbfgs")
    with pytest.raises(ValueError, match="Recipe: `lr` must be a float > 0, got 0"):
        train.Recipe(lr=0)
    with pytest.raises(TypeError, match="Recipe: `epochs` must be an int >= 1, got float"):
        train.Recipe(epochs=2.5)


def _run(*args, check=True):
    out = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=600)
    if check and out.returncode:
        raise AssertionError(out.stdout + out.stderr)
    return out


def test_resume_after_kill_9_is_bit_exact_and_the_run_writes_metrics_and_plot(tmp_path):
    common = ["--epochs", "3", "--batch-size", "128"]
    out = _run(*common, "--metrics", str(tmp_path / "straight.json"),
               "--plot", str(tmp_path / "c.png"))
    m = json.loads((tmp_path / "straight.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3] and "test accuracy" in out.stdout
    # 3 epochs at batch 128, --seed 0-7: 83.9-95.6% (93.91% at seed 0, as here; the lowest is
    # seed 5, whose initialisation stalls); seeds 0 and 5 the same within 0.03 points with other
    # CPU kernels (XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=). The floor: 8.9 under.
    assert 0.75 < m["test_accuracy"] <= 1 and m["images_per_second"] > 0
    assert m["wall_seconds"] > 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    straight = m["params_sha256"]
    assert len(straight) == 64

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
    assert "resuming from" in out.stdout
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["params_sha256"] == straight
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]


def test_script_refuses_a_resume_under_other_flags_and_stops_on_divergence(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import train as script  # scripts/train.py, run in this process (its compiles are cached)

    ckpt = tmp_path / "ckpt"
    assert script.main(["--epochs", "1", "--checkpoint-dir", str(ckpt)]) == 0
    good = (ckpt / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert script.main(["--epochs", "2", "--lr", "0.1", "--checkpoint-dir", str(ckpt),
                        "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--epochs: checkpoint 1, now 2" in err and "--lr: checkpoint 0.05, now 0.1" in err
    assert "--init-from" in err
    # entries that follow from a changed flag are not repeated; long values are cut
    lines = script.mismatch_lines([("model", "lenet5", "resnet"), ("architecture", "a", "b"),
                                   ("train_images", [5], [6]), ("init", "seed", "x" * 99)])
    assert lines == ["--model: checkpoint 'lenet5', now 'resnet'", "--dataset (its size): "
                     "checkpoint [5], now [6]", f"--init-from: checkpoint 'seed', now "
                     f"'{'x' * 56}..."]
    assert script.main(["--epochs", "1", "--checkpoint-dir", str(ckpt)]) == 2
    assert "already holds a checkpoint: add --resume" in capsys.readouterr().err
    assert (ckpt / "checkpoint.npz").read_bytes() == good
    assert script.main(["--epochs", "1", "--lr", "1e6", "--checkpoint-dir",
                        str(tmp_path / "new")]) == 3
    err = capsys.readouterr().err
    assert "train.py: diverged at step" in err and "gradient norm" in err and "(--lr)" in err
    assert not (tmp_path / "new" / "checkpoint.npz").exists()  # no epoch finished


def test_a_batch_norm_resnet20_trains_checkpoints_and_resumes_bit_exact(tmp_path):
    """ResNet-20 with batch norm through `fit`: its state (running statistics) goes into the
    checkpoint, a run resumed from epoch 1's checkpoint equals the straight run bit for bit
    (parameters and state), evaluation reads the state, and `load_params` returns it. 12x12
    crops of the digits (the layers are the same at any size; the graph is what compiles)."""
    import models

    full = data.load()
    ds = data.Dataset(full.train_images[:96, 8:20, 8:20], full.train_labels[:96],
                      full.test_images[:40, 8:20, 8:20], full.test_labels[:40])
    model, recipe = models.resnet20(), train.Recipe(epochs=2, batch_size=32)
    first = tmp_path / "after_epoch_1"

    def keep_epoch_1(record):
        if record["epoch"] == 1:
            first.mkdir()
            (first / "checkpoint.npz").write_bytes((tmp_path / "checkpoint.npz").read_bytes())

    straight = train.fit(model, ds, recipe, checkpoint_dir=tmp_path, on_epoch=keep_epoch_1)
    assert straight.step == 6 and straight.state is not None
    resumed = train.fit(model, ds, recipe, checkpoint_dir=first, resume=True)
    assert resumed.params_sha256 == straight.params_sha256
    assert train.params_sha256(resumed.state) == train.params_sha256(straight.state)
    assert resumed.history == straight.history  # the test accuracy used the same state
    init = model.init_state(ds.train_images.shape[1:])
    assert not any(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(init)))
    params, state = train.load_params(tmp_path / "checkpoint.npz", model, with_state=True)
    assert train.params_sha256(params) == straight.params_sha256
    assert train.params_sha256(state) == train.params_sha256(straight.state)
    evaluate = train.make_evaluate(model)
    assert evaluate(params, ds.test_images, ds.test_labels, state)[1] == \
        straight.history[-1]["test_accuracy"]
    with pytest.raises(ValueError, match="evaluate: the model carries state"):
        evaluate(params, ds.test_images, ds.test_labels)
    step = train.make_step(model, optax.sgd(0.1))
    x, y = jnp.asarray(ds.train_images[:8], jnp.float32) / 255, ds.train_labels[:8]
    with pytest.raises(ValueError, match=r"make_step: the model carries state .* pass `state`"):
        step(params, optax.sgd(0.1).init(params), x, y, jax.random.key(0))
    with pytest.raises(ValueError, match="make_step: the model is stateless; it takes no "
                                         "`state`"):
        lenet = _tiny()
        train.make_step(lenet[0], optax.sgd(0.1))(lenet[1], optax.sgd(0.1).init(lenet[1]),
                                                   x, y, jax.random.key(0), state)
