"""Data parallelism: the sharded step is the single-device step with its batch split, on 4 host
devices in one process (batch norm's statistics those of the whole batch) and on 2 processes x 2
devices (jax.distributed over gloo).

The device count is fixed when jax starts, so every check that needs several devices runs in a
fresh interpreter with XLA_FLAGS=--xla_force_host_platform_device_count=N.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from fcnn import parallel

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]

CHILD = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from fcnn import data, parallel, train
    from fcnn import layers as L

    model = L.serial(L.Conv2D(4, 3), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dropout(0.3),
                     L.Dense(10))
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    opt = optax.sgd(0.1, momentum=0.9)
    state = opt.init(params)
    mesh = parallel.batch_mesh(4)
    single = train.make_step(model, opt, weight_decay=1e-3, max_shift=2)
    sharded = train.make_step(model, opt, weight_decay=1e-3, max_shift=2, mesh=mesh)
    ds = data.load()
    x, y = next(data.batches(ds.train_images, ds.train_labels, 64, seed=2))
    key = jax.random.key(7)
    p_rep, s_rep = parallel.replicate(mesh, (params, state))
    out = {}

    def diff(a, b):
        return max(float(jnp.max(jnp.abs(jnp.asarray(u, float) - jnp.asarray(v, float))))
                   for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    for name, n in (("even", 64), ("remainder", 6)):
        xs, ys = parallel.shard_batch(mesh, x[:n], y[:n])
        want = single(params, state, x[:n], y[:n], key)
        got = sharded(p_rep, s_rep, xs, ys, key)
        out[name] = dict(
            shards=[list(s.data.shape) for s in xs.addressable_shards],
            devices=sorted(d.id for d in xs.sharding.device_set),
            diff=diff(want, got), scale=max(float(jnp.max(jnp.abs(u))) for u in
                                            jax.tree.leaves(want)),
            out_replicated=all(a.sharding.is_fully_replicated for a in jax.tree.leaves(got)),
        )
        if name == "even":
            hlo = sharded.lower(p_rep, s_rep, xs, ys, key).compile().as_text()
            out[name]["all_reduce"] = "all-reduce" in hlo
            out[name]["per_device_input"] = "f32[16,28,28,1]" in hlo
            out[name]["whole_input"] = "f32[64,28,28,1]" in hlo
    # ResNet-20 with batch norm (12x12 crops, 4 per device): the statistics are the global
    # batch's, as on one device, not each device's quarter
    import models
    bn = models.resnet20()
    bp, bs = bn.init(jax.random.key(1), (12, 12, 1))[0], bn.init_state((12, 12, 1))
    bo = opt.init(bp)
    xb, yb = x[:16, 8:20, 8:20], y[:16]
    want = train.make_step(bn, opt)(bp, bo, xb, yb, key, bs)
    xs, ys = parallel.shard_batch(mesh, xb, yb)
    got = train.make_step(bn, opt, mesh=mesh)(*parallel.replicate(mesh, (bp, bo)), xs, ys, key,
                                               parallel.replicate(mesh, bs))
    out["batch_norm"] = dict(
        diff=diff(want, got), scale=max(float(jnp.max(jnp.abs(u))) for u in
                                        jax.tree.leaves(want)),
        state_diff=diff(want[3], got[3]),
        moved=diff(want[3], bs),  # the statistics did change, so state_diff compares something
        out_replicated=all(a.sharding.is_fully_replicated for a in jax.tree.leaves(got)))
    try:
        parallel.batch_mesh(5)
    except ValueError as e:
        out["too_many"] = str(e)
    print(json.dumps(out))
""")


def _env(devices: int) -> dict:
    flags = [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}"]
    env = dict(os.environ, XLA_FLAGS=" ".join(flags).strip())  # the suite's flags kept
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_sharded_step_equals_single_device_step_and_splits_the_batch():
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         env=_env(4), timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    even, rem = out["even"], out["remainder"]
    # 64 images over 4 devices: 16 rows on each, and XLA reduces the gradient across them.
    assert even["shards"] == [[16, 28, 28, 1]] * 4 and even["devices"] == [0, 1, 2, 3]
    assert even["all_reduce"] and even["per_device_input"] and not even["whole_input"]
    # Same values as one device (dropout and shift keys included), up to the sum's order.
    assert even["diff"] <= 1e-5 * even["scale"], even
    # 6 images do not split 4 ways: replicated, every device computes the whole batch.
    assert rem["shards"] == [[6, 28, 28, 1]] * 4
    assert rem["diff"] <= 1e-5 * rem["scale"], rem
    assert even["out_replicated"] and rem["out_replicated"]
    bn = out["batch_norm"]  # synchronised batch norm: the single-device step's statistics
    # (per-device statistics, each device's quarter of the batch, would differ from them)
    assert bn["diff"] <= 1e-5 * bn["scale"] and bn["state_diff"] <= 1e-5, bn
    assert bn["moved"] > 1e-3 and bn["out_replicated"], bn
    assert "asked for 5 devices" in out["too_many"] and "device_count" in out["too_many"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_train_py_two_processes_match_one_process_with_four_devices(tmp_path):
    """scripts/train.py --distributed on 2 processes x 2 CPU devices (gloo collectives) trains
    the same model as --devices 4 in one process; only process 0 writes."""
    common = ["--epochs", "1", "--seed", "3"]
    port = _free_port()
    procs = [subprocess.Popen(
        [*TRAIN, *common, "--distributed", "--coordinator", f"localhost:{port}",
         "--num-processes", "2", "--process-id", str(i), "--metrics",
         str(tmp_path / f"dist{i}.json")],
        env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    one = subprocess.run([*TRAIN, *common, "--devices", "4", "--metrics",
                          str(tmp_path / "one.json")], env=_env(4), capture_output=True,
                         text=True, timeout=600)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    assert "4 devices in 2 process(es): 16 images per device" in outs[0][0]
    assert "epoch" in outs[0][0] and "epoch" not in outs[1][0]  # process 1 trains silently
    assert not (tmp_path / "dist1.json").exists()
    dist = json.loads((tmp_path / "dist0.json").read_text())["epochs"][0]
    local = json.loads((tmp_path / "one.json").read_text())["epochs"][0]
    assert dist["train_loss"] == pytest.approx(local["train_loss"], rel=1e-5)
    assert dist["test_loss"] == pytest.approx(local["test_loss"], rel=1e-4)
    assert abs(dist["test_accuracy"] - local["test_accuracy"]) <= 2e-4  # <= 2 of 10,000
    # One epoch of the main job, 1 device, --seed 0-15: 85.2-93.6%, but 42.5% for seed 5
    # (its initialisation: the same with other CPU kernels); seed 3: 90.4% on 1 device and
    # 89.1% on 4 (as here); the floor sits 15 points under the rest.
    assert local["test_accuracy"] > 0.7


def test_batch_mesh_checks_its_argument():
    assert parallel.batch_mesh().devices.size == len(jax.devices())
    assert parallel.batch_mesh(1).axis_names == ("batch",)
    with pytest.raises(TypeError, match="batch_mesh: `devices` must be an int"):
        parallel.batch_mesh("2")
    with pytest.raises(ValueError, match="asked for 0 devices"):
        parallel.batch_mesh(0)
    with pytest.raises(ValueError, match="empty list"):
        parallel.batch_mesh([])
    with pytest.raises(ValueError, match="array 1 is a scalar"):
        parallel.shard_batch(parallel.batch_mesh(1), [1.0], 2.0)


@pytest.mark.parametrize("argv, message", [
    (["--devices", "3"], "--batch-size 64 does not split evenly over 3 devices"),
    (["--devices", str(len(jax.devices()) + 1)], "xla_force_host_platform_device_count"),
    (["--coordinator", "localhost:1"], "--coordinator needs --distributed"),
])
def test_train_py_refuses_bad_device_flags(argv, message, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import train as script

    try:
        code = script.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
