"""fcnn.tuning: "auto" chooses each convolution map's algorithm by measurement, cached on disk.

The suite runs with FCNN_CONV_TUNING=table (conftest); these tests measure in temporary caches.
Timings are replaced by fixed numbers wherever the test is about the decision, not the clock.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import _files, ops, train, tuning
from fcnn.ops import _binding
from fcnn.ops.convolution import algorithms as algo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache in measure mode, a small budget, and a process that remembers nothing."""
    monkeypatch.setenv("FCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FCNN_CONV_TUNING", "measure")
    monkeypatch.setenv("FCNN_CONV_TUNING_BUDGET", "0.02")
    monkeypatch.setattr(tuning, "_memory", {})
    monkeypatch.setattr(tuning, "_mode", None)
    return tmp_path / "cache" / "conv-tuning"


def fixed_times(monkeypatch, times, calls=None, delay=0.0):
    """Measurements that return `times` (ms per candidate present) instead of timing."""

    def fake(shapes, dtype, candidates, run, budget):
        if calls is not None:
            calls.append(shapes)
        time.sleep(delay)
        return {k: v for k, v in times.items() if k in candidates}, {}

    monkeypatch.setattr(tuning, "_time_candidates", fake)


def no_measuring(monkeypatch):
    def fail(*args):
        raise AssertionError("measured where it must not")

    monkeypatch.setattr(tuning, "_time_candidates", fail)


def conv(x, w):
    return ops.conv2d(x, w, padding=1)


def operands(c_in=2, n=3, hw=7):
    return jnp.ones((n, hw, hw, c_in)), jnp.ones((3, 3, c_in, 5))


def resolve(which=2, table="xla", shape=(3, 7, 7, 2)):
    """`tuning.resolve` of a dK map directly, with a run that is never called (fixed times)."""
    config = {"stride": [1, 1], "padding": [[1, 1], [1, 1]], "dilation": [1, 1], "groups": 1,
              "size": [3, 3]}
    return tuning.resolve(which, (shape, shape[:3] + (5,)), jnp.float32, config,
                          ("xla", "im2col", "taps"), table, None)


# ----------------------------------------------------------------------------- measuring


def test_measures_once_then_reads_the_cache(cache, monkeypatch):
    x, w = operands()
    (first,) = tuning.plan(conv, x, w)
    assert (first.map, first.source, first.table) == ("forward", "measured", "taps")
    candidates = algo.candidates(0, _cfg(), x.dtype)
    assert first.algorithm in candidates
    assert set(first.times_ms) | set(first.dropped_ms) == set(candidates)
    assert first.algorithm == min(first.times_ms, key=first.times_ms.get) or (
        first.times_ms[first.table] <= 1.05 * min(first.times_ms.values()))
    (path,) = cache.glob("*.json")
    record = json.loads(path.read_text())
    assert record["algorithm"] == first.algorithm
    assert record["key"]["shapes"] == [[3, 7, 7, 2], [3, 3, 2, 5]]
    assert record["key"]["cpu"] == tuning.machine()["cpu"]

    monkeypatch.setattr(tuning, "_memory", {})  # a new process: the file, no measuring
    no_measuring(monkeypatch)
    (again,) = tuning.plan(conv, x, w)
    assert (again.algorithm, again.source, again.path) == (first.algorithm, "cache", str(path))


def _cfg():
    return ops.conv._config("t", (3, 7, 7, 2), (3, 3, 2, 5), 1, 1, 1, 1, "auto")


def test_a_train_step_is_planned_map_by_map(cache, monkeypatch):
    """LeNet-5's step: both convs' forward (with its bias and ReLU: the fused op's, its own key)
    and dK, the second's dX (the first has no dX: the image needs no gradient), each at its own
    shape; plan measures only what is new."""
    monkeypatch.setenv("FCNN_CONV_TUNING", "table")
    from models import lenet5

    model = lenet5(num_classes=10)
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    opt = train.Recipe().optimizer_for(1)
    step = train.make_step(model, opt)
    x, y = jnp.zeros((4, 28, 28, 1)), jnp.zeros((4,), jnp.int32)
    choices = tuning.plan(step, params, opt.init(params), x, y, jax.random.key(0))
    seen = sorted((c.map, c.shapes) for c in choices)
    assert seen == [
        ("dk", ((4, 14, 14, 6), (4, 10, 10, 16))), ("dk", ((4, 28, 28, 1), (4, 28, 28, 6))),
        ("dx", ((4, 10, 10, 16), (5, 5, 6, 16))),
        ("forward", ((4, 14, 14, 6), (5, 5, 6, 16), (16,))),
        ("forward", ((4, 28, 28, 1), (5, 5, 1, 6), (6,))),
    ]
    assert [c.config.get("epilogue") for c in choices if c.map == "forward"] == ["bias+relu"] * 2
    for c in choices:  # table mode: the built-in table's choice, nothing on disk
        assert c.source == "table" and c.algorithm == c.table
        which = tuning.MAPS.index(c.map)
        w_shape = c.shapes[1] if which < 2 else c.config["size"] + [c.shapes[0][3],
                                                                      c.shapes[1][3]]
        in_hw = c.shapes[0][1:3] if which != 1 else c.config["size"]
        assert c.algorithm == algo.choose(w_shape, 1, in_hw)[which]
    assert not cache.exists()
    text = tuning.format_plan(choices)
    assert text.count("\n") == 6 and "(4, 28, 28, 1) x (5, 5, 1, 6) x (6,)" in text
    assert "then bias+relu" in text


def test_the_fastest_wins_unless_the_table_is_within_the_margin(cache, monkeypatch):
    fixed_times(monkeypatch, {"xla": 1.0, "im2col": 0.97, "taps": 2.0})
    assert resolve(table="xla") == "xla"  # 3% faster is noise: the table stands
    monkeypatch.setattr(tuning, "_memory", {})
    fixed_times(monkeypatch, {"xla": 1.0, "im2col": 0.9, "taps": 2.0})
    assert resolve(table="xla", shape=(3, 8, 8, 2)) == "im2col"
    assert resolve(table="taps", shape=(3, 9, 9, 2)) == "im2col"


def test_the_key_holds_everything_the_measurement_depends_on(cache, monkeypatch):
    base = dict(which=2, shapes=((3, 7, 7, 2), (3, 7, 7, 5)), dtype="float32",
                config={"stride": [1, 1], "groups": 1}, candidates=("xla", "im2col"))

    def path(**change):
        return tuning._path(cache, tuning._key(**{**base, **change}))

    assert path() == path()
    others = [path(which=0), path(shapes=((4, 7, 7, 2), (4, 7, 7, 5))), path(dtype="bfloat16"),
              path(config={"stride": [2, 2], "groups": 1}),
              path(candidates=("xla", "im2col", "onednn"))]
    assert len({path(), *others}) == 6
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=false")  # read at call time
    key = tuning._key(**base)
    assert key["xla_flags"] == "--xla_cpu_use_thunk_runtime=false"
    assert {"cpu", "isa", "cores", "jax", "jaxlib", "fcnn_tuning"} <= set(key)
    monkeypatch.delenv("XLA_FLAGS")
    assert tuning._key(**base) != key


# ----------------------------------------------------------------------------- modes and fallback


def test_table_and_cached_modes_never_measure(cache, monkeypatch):
    no_measuring(monkeypatch)
    x, w = operands(c_in=3)
    with tuning.using("table"):
        assert tuning.mode() == "table"
        (c,) = tuning.plan(conv, x, w)
        assert (c.source, c.algorithm) == ("table", "taps")
    assert tuning.mode() == "measure"
    with tuning.using("cached"):  # nothing cached yet: the table
        (c,) = tuning.plan(conv, x, w)
        assert c.source == "table"
    assert not cache.exists() or not list(cache.glob("*.json"))
    fixed_times(monkeypatch, {"xla": 0.5, "phase": 1.0, "im2col": 1.0, "taps": 1.0})
    (measured,) = tuning.plan(conv, x, w)
    assert measured.algorithm == "xla"
    monkeypatch.setattr(tuning, "_memory", {})
    no_measuring(monkeypatch)
    with tuning.using("cached"):  # now cached: the measured choice
        (c,) = tuning.plan(conv, x, w)
        assert (c.source, c.algorithm) == ("cache", "xla")


def test_bad_modes_and_budgets_are_named(cache, monkeypatch):
    with pytest.raises(ValueError, match="set_mode: the conv tuning mode must be one of "
                                         "measure, cached, table, got 'fast'"):
        tuning.set_mode("fast")
    monkeypatch.setenv("FCNN_CONV_TUNING", "always")
    with pytest.raises(ValueError, match="FCNN_CONV_TUNING: .* got 'always'"):
        tuning.mode()
    monkeypatch.setenv("FCNN_CONV_TUNING", "measure")
    monkeypatch.setenv("FCNN_CONV_TUNING_BUDGET", "0")
    with pytest.raises(ValueError, match="FCNN_CONV_TUNING_BUDGET: expected a positive number "
                                         "of seconds, got '0'"):
        resolve()


def test_an_unwritable_cache_falls_back_to_the_table(cache, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FCNN_CACHE_DIR", str(blocker))  # its conv-tuning folder cannot exist
    monkeypatch.setattr(tuning, "_warned", set())
    no_measuring(monkeypatch)
    with pytest.warns(UserWarning, match="cannot be written .* built-in table"):
        assert resolve(table="taps") == "taps"


def test_unreadable_and_foreign_records_are_measured_again(cache, monkeypatch):
    fixed_times(monkeypatch, {"xla": 1.0, "im2col": 0.5, "taps": 2.0})
    assert resolve() == "im2col"
    (path,) = cache.glob("*.json")
    for bad in ("{not json", json.dumps({"key": {"map": "dx"}, "algorithm": "xla"}),
                json.dumps({"key": json.loads(path.read_text())["key"], "algorithm": "magic"})):
        path.write_text(bad)
        monkeypatch.setattr(tuning, "_memory", {})
        calls = []
        fixed_times(monkeypatch, {"xla": 1.0, "im2col": 2.0, "taps": 0.4}, calls)
        assert resolve() == "taps" and len(calls) == 1
        assert json.loads(path.read_text())["algorithm"] == "taps"


def test_export_and_other_platforms_use_the_table(cache, monkeypatch):
    """An exported artifact must not depend on this machine's cache; a program lowered for a
    GPU runs XLA's convolution whatever the CPU's choice."""
    fixed_times(monkeypatch, {"xla": 0.1, "phase": 1.0, "im2col": 1.0, "taps": 1.0})
    x, w = operands(c_in=1, hw=6)
    f = jax.jit(conv)

    def lowered(platforms=("cpu",)):
        return f.trace(x, w).lower(lowering_platforms=platforms).as_text(debug_info=False)

    def exported():  # the program, without its source locations
        text = jax.export.export(f)(x, w).mlir_module()
        return re.sub(r" loc\(#loc\d*\)", "", re.sub(r"(?m)^#loc.*\n", "", text))

    measured = lowered()
    with tuning.using("table"):
        table, exported_table = lowered(), exported()
    assert measured != table  # the measured choice (xla) is not the table's (taps)
    no_measuring(monkeypatch)
    monkeypatch.setattr(tuning, "_memory", {})
    jax.clear_caches()
    assert exported() == exported_table
    lowered(("cuda",))


def test_the_custom_vjp_binding_is_planned_too(cache, monkeypatch):
    fixed_times(monkeypatch, {"xla": 1.0, "phase": 1.0, "im2col": 1.0, "taps": 0.2})
    x, w = operands(c_in=4, hw=5)
    with _binding.using("custom_vjp"):
        (c,) = tuning.plan(conv, x, w)
    assert (c.map, c.algorithm, c.source) == ("forward", "taps", "measured")


# ----------------------------------------------------------------------------- concurrency


def test_threads_share_one_measurement(cache, monkeypatch):
    calls, results = [], []
    fixed_times(monkeypatch, {"xla": 1.0, "im2col": 0.5, "taps": 2.0}, calls, delay=0.2)
    threads = [threading.Thread(target=lambda: results.append(resolve())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["im2col"] * 4 and len(calls) == 1


RACER = textwrap.dedent("""
    import sys, time
    from fcnn import tuning
    preferred = sys.argv[1]
    def fake(shapes, dtype, candidates, run, budget):
        time.sleep(1.0)  # every process measures at the same time
        return {c: (0.5 if c == preferred else 1.0) for c in candidates}, {}
    tuning._time_candidates = fake
    config = {"stride": [1, 1], "padding": [[0, 0], [0, 0]], "dilation": [1, 1],
              "groups": 1, "size": [3, 3]}
    print(tuning.resolve(2, ((2, 5, 5, 1), (2, 3, 3, 4)), "float32", config,
                         ("xla", "im2col", "taps"), "xla", None))
""")


def test_processes_racing_adopt_one_record(cache):
    """Three processes find no record, each measures a different winner, each tries to create
    the record: exactly one file results and every process runs the choice it holds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, pref], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for pref in ("xla", "im2col", "taps")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    (path,) = cache.glob("*.json")
    on_disk = json.loads(path.read_text())["algorithm"]
    assert [out.strip() for out, _ in outs] == [on_disk] * 3
    assert not list(cache.glob(".*.tmp"))


def test_create_once_keeps_the_first_file(tmp_path):
    path = tmp_path / "sub" / "f.json"
    assert _files.create_once(path, lambda f: f.write(b"first"))
    assert not _files.create_once(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"first" and len(list(path.parent.iterdir())) == 1


# ----------------------------------------------------------------------------- the script


def test_tune_script_pre_tunes_a_model(cache, monkeypatch, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import tune
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    monkeypatch.setenv("FCNN_CONV_TUNING_BUDGET", "0.005")
    out = tune.main(["--batch-size", "2", "--eval-batch-size", "3", "--json",
                     str(tmp_path / "c.json")])
    train_rows, eval_rows = out.values()
    assert len(train_rows) == 5 and len(eval_rows) == 2
    assert {r["source"] for r in train_rows + eval_rows} == {"measured"}
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(json.dumps(out))
    assert len(list(cache.glob("*.json"))) == 7
    printed = capsys.readouterr().out
    assert "train step, batch 2" in printed and "evaluation, batch 3" in printed
    monkeypatch.setattr(tuning, "_memory", {})
    no_measuring(monkeypatch)
    again = tune.main(["--batch-size", "2", "--eval-batch-size", "3"])
    assert {r["source"] for rows in again.values() for r in rows} == {"cache"}
    assert [r["algorithm"] for r in sum(again.values(), [])] == [
        r["algorithm"] for r in train_rows + eval_rows]


def test_measured_choices_compute_the_same_gradients(cache):
    """Measured end to end under jit and grad: whatever was chosen agrees with the table's
    program to float32 rounding (each algorithm's own sweep is test_conv's)."""
    x = jax.random.normal(jax.random.key(1), (4, 12, 12, 3))
    w = jax.random.normal(jax.random.key(2), (3, 3, 3, 8))

    def loss(x, w):
        return jnp.sum(ops.conv2d(x, w, padding=1) ** 2)

    measured = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    with tuning.using("table"):
        table = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    for a, b in zip(measured, table):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
