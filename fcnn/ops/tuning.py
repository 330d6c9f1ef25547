"""How `algorithm="auto"` picks each convolution map's algorithm: by measurement, kept on disk.

The first time a convolution map (forward, dX or dK) of a new shape is compiled for the CPU, the
algorithms that compute it differently (`convolution.algorithms.candidates`: XLA's convolution, the
phase split, im2col, taps) are each compiled on random arrays of that shape and timed,
interleaved, within a budget (`FCNN_CONV_TUNING_BUDGET` seconds of timed runs per map, default
1). The fastest by median wins, except that the built-in table's choice
(`convolution.algorithms.choose`, fitted on one CPU) stands unless another is at least 5% faster, so
noise does not flip near-ties. The choice is written to a JSON file per key in the user cache
directory and read from there by every later process:

    key = map, operand shapes, input/kernel size, stride, padding, dilation, groups, dtype,
          the candidates, CPU model, ISA, cores, jax and jaxlib versions, XLA_FLAGS

Modes (`FCNN_CONV_TUNING` in the environment, or `set_mode` / `using`):

- "measure" (default): the cache, else measure and write it;
- "cached": the cache, else the built-in table; never measures;
- "table": the built-in table only: the program depends on nothing but the shapes.

The table is also used wherever measuring is impossible or unwanted: a program lowered by
`jax.export` (the artifact must not depend on this machine's cache) or for a platform other
than the CPU (where "auto" runs XLA's convolution anyway), tracing on a machine whose default
backend is not the CPU, and a cache directory that cannot be written (a warning says so).
Under the custom_vjp binding the choice is made while tracing, where `jax.export` cannot be
told apart: wrap the export in `tuning.using("table")`.

Bit-exactness: the algorithms compute the same sums in different orders, so a different choice
can change the last bits of a result. The same cache (and mode) gives the same program, hence
bit-identical results run after run; `tuning.using("table")` gives the same program on every
machine. `plan(fn, *args)` tells which algorithms a function's convolutions run, and why.

Concurrent processes: each measures a key it does not find, writes its record to a temporary
file and links it into place only if no record is there yet, then adopts the record on disk, so
all processes run the same choice. An unreadable or foreign record is measured again and
replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fcnn import _files

MODES = ("measure", "cached", "table")
MAPS = ("forward", "dx", "dk")
VERSION = 1  # of the measurement and of the record: part of every key
BUDGET_S = 1.0  # seconds of timed runs per map, after compiling (FCNN_CONV_TUNING_BUDGET)
MARGIN = 0.05  # the table's choice stands unless another is this much faster by median
PRUNE = 4.0  # a candidate whose untimed-warm-up run is this much slower than the best is dropped
MAX_ROUNDS = 15
LOOPED_UNDER_VMAP = ("onednn",)  # an FFI call: vmap makes it a loop of calls
_ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
        "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16",
        "amx_int8", "asimd", "sve", "sve2")

_log = logging.getLogger(__name__)
_lock = threading.RLock()  # one measurement at a time; guards the in-process memory
_memory: dict[str, Choice] = {}
_local = threading.local()  # .lowering: (platforms, for_export) of the program being lowered
_mode: str | None = None  # set_mode's; None: the environment's
_records: list[list] = []  # open `plan` recordings
_warned: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Choice:
    """One convolution map's algorithm and how it was chosen.

    `source`: "measured" (timed by this process), "cache" (timed earlier, read from `path`) or
    "table" (the built-in table). `times_ms`: median milliseconds per candidate when measured;
    `dropped_ms`: the one untimed run of candidates over PRUNE times slower than the best, which
    were not timed further; `table`: the built-in table's choice for the same map."""

    map: str
    shapes: tuple
    config: dict
    dtype: str
    algorithm: str
    source: str
    table: str
    times_ms: dict | None = None
    dropped_ms: dict | None = None
    path: str | None = None

    def row(self) -> dict:
        times = ", ".join(f"{k} {v:.3g}" for k, v in sorted((self.times_ms or {}).items(),
                                                               key=lambda kv: kv[1]))
        dropped = ", ".join(f"{k} {v:.3g}" for k, v in sorted((self.dropped_ms or {}).items(),
                                                                 key=lambda kv: kv[1]))
        if dropped:
            times += f"; once: {dropped}"
        return {"map": self.map, "shapes": " x ".join(str(tuple(s)) for s in self.shapes),
                "config": _describe(self.config), "algorithm": self.algorithm,
                "source": self.source, "table": self.table, "times (ms)": times}


# ----------------------------------------------------------------------------- modes


def _check_mode(name, where):
    if name not in MODES:
        raise ValueError(f"{where}: the conv tuning mode must be one of {', '.join(MODES)}, got "
                         f"{name!r}.")
    return name


def mode() -> str:
    """The mode "auto" resolves with now: `set_mode`'s, else `FCNN_CONV_TUNING`, else
    "measure"."""
    if _mode is not None:
        return _mode
    return _check_mode(os.environ.get("FCNN_CONV_TUNING", "measure"), "FCNN_CONV_TUNING")


def set_mode(name: str | None) -> None:
    """Resolve "auto" with mode `name` from now on (None: the environment's again). A change
    clears JAX's caches, so no function traced under the other mode is served stale."""
    global _mode
    if name is not None:
        _check_mode(name, "set_mode")
    before = mode()
    _mode = name
    if mode() != before:
        import jax

        jax.clear_caches()


@contextlib.contextmanager
def using(name: str):
    """Resolve "auto" with mode `name` inside the `with` block."""
    before = _mode
    set_mode(name)
    try:
        yield
    finally:
        set_mode(before)


@contextlib.contextmanager
def vectorised():
    """Inside: maps are traced under `jax.vmap` as one batch of problems (a primitive's
    members), where a foreign kernel (LOOPED_UNDER_VMAP) runs once per problem: those are not
    candidates there."""
    before = getattr(_local, "vectorised", False)
    _local.vectorised = True
    try:
        yield
    finally:
        _local.vectorised = before


@contextlib.contextmanager
def lowering(platforms, for_export):
    """Inside a primitive's lowering: which platforms the program is for, and whether it is
    being exported (set by the convolution primitives' lowering rules)."""
    before = getattr(_local, "lowering", None)
    _local.lowering = (tuple(platforms), bool(for_export))
    try:
        yield
    finally:
        _local.lowering = before


def exporting() -> bool:
    """Whether the primitive being lowered is lowered for `jax.export` (native kernels, whose
    custom calls JAX will not serialise unasked, are left out then)."""
    where = getattr(_local, "lowering", None)
    return bool(where and where[1])


def lowering_rule(rule):
    """`rule` (a primitive's lowering) run inside `lowering(...)` for its module."""

    def lower(ctx, *args, **params):
        module = ctx.module_context
        with lowering(module.platforms, module.lowering_parameters.for_export):
            return rule(ctx, *args, **params)

    return lower


def _table_only() -> str:
    """Why the table must be used whatever the mode ("" if measuring is allowed)."""
    where = getattr(_local, "lowering", None)
    if where is not None:
        platforms, for_export = where
        if for_export:
            return "export"
        return "" if "cpu" in platforms else "platform"
    import jax

    return "" if jax.default_backend() == "cpu" else "platform"


# ----------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """Where choices are kept: `$FCNN_CACHE_DIR`, else `$XDG_CACHE_HOME/fcnn`, else
    `~/.cache/fcnn`; the records are the JSON files in its `conv-tuning` folder."""
    root = os.environ.get("FCNN_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = Path(xdg) / "fcnn" if xdg else Path.home() / ".cache" / "fcnn"
    return Path(root) / "conv-tuning"


def _writable_dir() -> Path | None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
        why = "not writable"
    except OSError as e:
        why = str(e)
    if str(folder) not in _warned:
        _warned.add(str(folder))
        warnings.warn(f"fcnn.tuning: the cache directory {folder} cannot be written ({why}); "
                      f"convolutions use the built-in table. Set FCNN_CACHE_DIR to a writable "
                      f"folder, or FCNN_CONV_TUNING=table to silence this.", stacklevel=2)
    return None


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    """What a measurement depends on besides the convolution: CPU, ISA, cores, versions."""
    import jax
    import jaxlib

    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and not model:
                    model = value.strip()
                elif name in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    return {"cpu": model, "isa": [f for f in _ISA if f in flags], "cores": cores,
            "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _key(which, shapes, dtype, config, candidates) -> dict:
    return {"fcnn_tuning": VERSION, "map": MAPS[which], "shapes": [list(s) for s in shapes],
            "dtype": str(dtype), "config": config, "candidates": list(candidates),
            **machine(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _path(folder, key) -> Path:
    text = json.dumps(key, sort_keys=True)
    return folder / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def _read(path, key):
    """The record at `path` if it is readable and for `key` (else None: measure again)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("key") != key
            or record.get("algorithm") not in key["candidates"]):
        return None
    return record


def _write(path, record, key):
    """Put `record` at `path` unless a valid record is already there; return the one on disk
    (another process's, if it won the race)."""
    data = json.dumps(record, indent=1, sort_keys=True).encode()
    try:
        if _read(path, key) is None and path.exists():  # unreadable or foreign: replace it
            _files.atomic_write(path, lambda f: f.write(data))
        else:
            _files.create_once(path, lambda f: f.write(data))
    except OSError as e:
        _log.warning("fcnn.tuning: could not write %s (%s); the choice holds for this process "
                     "only", path, e)
        return record
    return _read(path, key) or record


def entries() -> list[Choice]:
    """Every choice recorded in `cache_dir()` (any machine, any version)."""
    out = []
    for path in sorted(cache_dir().glob("*.json")):
        try:
            with open(path) as f:
                record = json.load(f)
            key = record["key"]
            out.append(_choice(key, record, "cache", str(path)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def clear() -> int:
    """Delete the recorded choices (this process forgets them too); returns how many files."""
    with _lock:
        _memory.clear()
        count = 0
        for path in cache_dir().glob("*.json"):
            path.unlink(missing_ok=True)
            count += 1
        return count


def _choice(key, record, source, path=None) -> Choice:
    return Choice(key["map"], tuple(tuple(s) for s in key["shapes"]), key["config"],
                  key["dtype"], record["algorithm"], source, record.get("table", ""),
                  record.get("times_ms"), record.get("dropped_ms"), path)


# ----------------------------------------------------------------------------- resolving


def resolve(which, shapes, dtype, config, candidates, table, run) -> str:
    """The algorithm for map `which` (0 forward, 1 dX, 2 dK) of a convolution whose operands
    have `shapes` and `dtype`, under `config` (a JSON-able dict); `candidates` are the
    algorithms that compute it differently, `table` the built-in choice (one of them), and
    `run(algorithm, a, b)` computes the map (used to time each candidate)."""
    table_choice = Choice(MAPS[which], tuple(tuple(s) for s in shapes), config, str(dtype),
                          table, "table", table)
    current = mode()
    if getattr(_local, "vectorised", False):  # a loop of calls under vmap: not what was timed
        candidates = tuple(c for c in candidates if c not in LOOPED_UNDER_VMAP)
    if current == "table" or len(candidates) < 2 or _table_only():
        return _recorded(table_choice)
    key = _key(which, shapes, dtype, config, candidates)
    text = json.dumps(key, sort_keys=True)
    with _lock:
        if text in _memory:
            return _recorded(_memory[text])
        folder = _writable_dir()
        if folder is None:
            return _recorded(table_choice)
        path = _path(folder, key)
        record = _read(path, key)
        if record is not None:
            choice = _choice(key, record, "cache", str(path))
        elif current == "cached":
            return _recorded(table_choice)
        else:
            record = _measure(which, shapes, dtype, candidates, table, run)
            record = _write(path, {"key": key, **record}, key)
            choice = _choice(key, record, "measured", str(path))
        _memory[text] = choice
        return _recorded(choice)


def _recorded(choice: Choice) -> str:
    for record in _records:
        record.append(choice)
    return choice.algorithm


def _budget() -> float:
    text = os.environ.get("FCNN_CONV_TUNING_BUDGET", "")
    try:
        budget = float(text) if text else BUDGET_S
    except ValueError:
        budget = -1.0
    if not budget > 0:
        raise ValueError(f"FCNN_CONV_TUNING_BUDGET: expected a positive number of seconds, got "
                         f"{text!r}.")
    return budget


def _measure(which, shapes, dtype, candidates, table, run) -> dict:
    """Time every candidate on random arrays of `shapes` on the CPU. Runs in a fresh thread:
    it may be called while a program is being traced or lowered, whose context a thread does
    not inherit."""
    budget = _budget()
    with ThreadPoolExecutor(1, thread_name_prefix="fcnn-tuning") as pool:
        times, dropped = pool.submit(_time_candidates, shapes, dtype, candidates, run,
                                     budget).result()
    if not times:  # nothing compiled: keep the table
        return {"algorithm": table, "table": table, "times_ms": {}, "dropped_ms": {}}
    best = min(times, key=times.get)
    if table in times and times[table] <= (1 + MARGIN) * times[best]:
        best = table
    _log.info("fcnn.tuning: %s %s %s -> %s (%s)", MAPS[which], shapes, dtype, best, times)
    return {"algorithm": best, "table": table, "times_ms": times, "dropped_ms": dropped,
            "budget_s": budget,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _time_candidates(shapes, dtype, candidates, run, budget) -> dict:
    import jax

    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(0)
    args = [jax.device_put(rng.standard_normal(s).astype(dtype), cpu) for s in shapes]
    compiled = {}
    for name in candidates:
        try:
            compiled[name] = jax.jit(functools.partial(run, name)).lower(*args).compile()
        except Exception as e:  # noqa: BLE001 - a candidate that cannot build is not chosen
            _log.warning("fcnn.tuning: %s did not compile for %s: %s", name, shapes, e)

    def once(f):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        return time.perf_counter() - start

    warm = {name: once(f) for name, f in compiled.items()}
    if not warm:
        return {}, {}
    live = [n for n in compiled if warm[n] <= PRUNE * min(warm.values())]
    dropped = {n: round(warm[n] * 1e3, 4) for n in compiled if n not in live}
    samples = {n: [] for n in live}
    start, rounds = time.perf_counter(), 0
    while rounds < MAX_ROUNDS and (rounds < 1 or time.perf_counter() - start < budget):
        for name in (live if rounds % 2 == 0 else live[::-1]):  # alternate the order
            samples[name].append(once(compiled[name]))
        rounds += 1
    return {n: round(float(np.median(samples[n])) * 1e3, 4) for n in live}, dropped


# ----------------------------------------------------------------------------- inspection


@contextlib.contextmanager
def _recording():
    choices: list[Choice] = []
    _records.append(choices)
    try:
        yield choices
    finally:
        _records.remove(choices)


def plan(fn, *args, **kwargs) -> list[Choice]:
    """The algorithms `fn(*args, **kwargs)`'s convolutions run when compiled for the CPU, one
    `Choice` per distinct map and shape, in the order they are met. Lowers `fn` (jitted or not)
    for the CPU without running it; in "measure" mode, shapes not yet in the cache are measured
    now, so a `plan` of a train step pre-tunes it. Under the custom_vjp binding the choice is
    made while tracing, so JAX's caches are cleared first."""
    import jax

    from fcnn.ops import _binding

    if _binding.binding() != "primitive":
        jax.clear_caches()
    with _recording() as seen:
        jax.jit(lambda *a, **k: fn(*a, **k)).trace(*args, **kwargs).lower(
            lowering_platforms=("cpu",))
    out, keys = [], set()
    for choice in seen:
        ident = (choice.map, choice.shapes, json.dumps(choice.config, sort_keys=True),
                 choice.dtype)
        if ident not in keys:
            keys.add(ident)
            out.append(choice)
    return out


def _describe(config) -> str:
    parts = []
    for name in ("stride", "dilation", "groups"):
        value = config.get(name)
        if value not in (None, 1, [1, 1], (1, 1)):
            parts.append(f"{name} {value}")
    pads = config.get("padding")
    if pads and any(p for pair in pads for p in pair):
        parts.append(f"pad {pads}")
    if config.get("epilogue"):  # the fused convolution's forward, measured as a whole
        parts.append(f"then {config['epilogue']}")
    return ", ".join(parts) or "-"


def format_plan(choices) -> str:
    """`plan`'s choices as a plain-text table."""
    rows = [c.row() for c in choices]
    if not rows:
        return "(no convolutions)"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols),
             "  ".join("-" * width[c] for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
