"""Checkpoints that cannot execute code on load, written atomically, verified on restore.

Format (version 1): an uncompressed `.npz` (a zip of `.npy` arrays, read with
`allow_pickle=False`) holding every leaf of the saved tree as `leaf_00000`, ... and a `meta` entry:
JSON with the format version, step, epoch, the tree's structure as text, each leaf's shape and
dtype, the run's configuration, user metadata, and the SHA-256 of all leaf bytes. Restoring
needs a template of the same structure (e.g. fresh params and optimizer state), checks shapes
and dtypes against it, refuses a file whose bytes do not hash to the recorded digest (truncated
or tampered) and, given the configuration of the run that wants to continue, refuses one made
under another (`ConfigMismatch`, naming every differing entry).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import jax
import numpy as np

from fcnn._files import atomic_write

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, tampered with, or does not fit the template."""


class ConfigMismatch(CheckpointError):
    """A checkpoint made under another configuration than the run that wants to resume it.

    `differences` lists `(key, saved, now)` for every entry that differs (`None`: absent).
    """

    def __init__(self, path, differences: list[tuple[str, object, object]]):
        self.path, self.differences = Path(path), differences
        listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in differences)
        super().__init__(f"{path}: made under another configuration ({listed}). Resuming would "
                         "reproduce neither run: continue with the checkpoint's configuration, or "
                         "start a new run (from its parameters, if that is what you want).")


def _json(value):
    """`value` as it reads back from JSON (tuples become lists), so configurations compare."""
    return json.loads(json.dumps(value))


def config_differences(saved: dict, now: dict) -> list[tuple[str, object, object]]:
    """`(key, saved, now)` for each key whose values differ, in `now`'s order, then `saved`'s."""
    saved, now = _json(saved), _json(now)
    keys = [*now, *(k for k in saved if k not in now)]
    return [(k, saved.get(k), now.get(k)) for k in keys if saved.get(k) != now.get(k)]


def _leaves(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # typed PRNG keys are stored as their raw data
        out.append(np.asarray(leaf))
    return out, treedef


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save(path, tree, *, step: int = 0, epoch: int = 0, metadata: dict | None = None,
         config: dict | None = None) -> None:
    """Save `tree` (any pytree of arrays: params, optimizer state, PRNG keys) atomically: a crash
    mid-save leaves the previous file at `path` intact.

    `config` (JSON-serialisable) is what determined the run — `restore(..., config=)` compares
    against it; `metadata` is anything else worth keeping (e.g. a metrics history).
    """
    arrays, treedef = _leaves(tree)
    meta = dict(format_version=FORMAT_VERSION, step=int(step), epoch=int(epoch),
                treedef=str(treedef), shapes=[list(a.shape) for a in arrays],
                dtypes=[a.dtype.str for a in arrays], sha256=_digest(arrays),
                config=_json(config or {}), metadata=metadata or {})
    entries = {f"leaf_{i:05d}": a for i, a in enumerate(arrays)}
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **entries))


def _read(path):
    """`(meta, arrays)` of a checkpoint file, or a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here.")
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            arrays = [z[f"leaf_{i:05d}"] for i in range(len(meta["shapes"]))]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupt: {e}).") \
            from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('format_version')!r}, this "
                              f"fcnn reads {FORMAT_VERSION}.")
    if _digest(arrays) != meta["sha256"]:
        raise CheckpointError(f"{path}: contents do not match their recorded SHA-256 "
                              "(tampered or corrupt).")
    return meta, arrays


def _info(meta) -> dict:
    return dict(step=meta["step"], epoch=meta["epoch"], config=meta.get("config", {}),
                metadata=meta["metadata"])


def read_info(path) -> dict:
    """A checkpoint's `step`, `epoch`, `config` (`{}` if none) and `metadata`, after the same
    checks as `restore`, without a template."""
    return _info(_read(path)[0])


def restore(path, template, *, config: dict | None = None):
    """Restore a tree saved by `save`, shaped like `template`.

    Args:
      path: the checkpoint file.
      template: a tree of the saved structure, shapes and dtypes (e.g. fresh params), or a
        function of the checkpoint's info dict returning one (to build it from the recorded
        configuration; the file is read and verified once).
      config: the configuration of the run that continues from this checkpoint; when given,
        it must equal the saved one entry for entry.

    Returns:
      `(tree, info)` where info is the dict with `step`, `epoch`, `config`, `metadata`.

    Raises:
      CheckpointError: missing, truncated or tampered file; another format version; a tree
        that does not match the template.
      ConfigMismatch: (a CheckpointError) `config` given and different from the saved one.
    """
    meta, arrays = _read(path)
    if config is not None:
        if not meta.get("config"):
            raise CheckpointError(f"{path}: records no configuration (written by an older fcnn, "
                                  "or without one), so nothing shows it belongs to this run; "
                                  "start a new run (from its parameters, if you want them).")
        differences = config_differences(meta["config"], config)
        if differences:
            raise ConfigMismatch(path, differences)
    if callable(template):
        template = template(_info(meta))
    template_leaves, treedef = _leaves(template)
    if str(treedef) != meta["treedef"] or len(template_leaves) != len(arrays):
        raise CheckpointError(f"{path}: saved tree structure does not match the template "
                              f"(saved {len(arrays)} leaves, template {len(template_leaves)}).")
    for i, (a, t) in enumerate(zip(arrays, template_leaves)):
        if a.shape != t.shape or a.dtype != t.dtype:
            raise CheckpointError(f"{path}: leaf {i} is {a.shape} {a.dtype}, the template "
                                  f"expects {t.shape} {t.dtype}.")
    originals = jax.tree_util.tree_leaves(template)
    restored = [
        jax.random.wrap_key_data(a, impl=jax.random.key_impl(o))
        if isinstance(o, jax.Array) and jax.dtypes.issubdtype(o.dtype, jax.dtypes.prng_key)
        else jax.numpy.asarray(a)
        for a, o in zip(arrays, originals)
    ]
    return jax.tree_util.tree_unflatten(treedef, restored), _info(meta)
