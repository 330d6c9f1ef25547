"""Trained weights in and out: PyTorch/torchvision state dicts and safetensors files.

A PyTorch `state_dict` is a mapping of names to arrays ("layer1.0.conv1.weight" -> a
`(64, 64, 3, 3)` tensor). `from_torch(name, state_dict)` turns the state dict of torchvision's
network `name` into fcnn's `(params, state)` for `models.<name>`, and `to_torch(name, params,
state)` turns them back. Every conversion is explicit and checked:

- a convolution's kernel OIHW -> fcnn's HWIO (`w.transpose(2, 3, 1, 0)`), its bias as is;
- a Linear's weight `(out, in)` -> fcnn's Dense `(in, out)`; the first Linear after a
  flatten also reorders its inputs, since PyTorch flattens a `(C, H, W)` map and fcnn an
  `(H, W, C)` one;
- a BatchNorm's `weight`/`bias` -> params `gamma`/`beta`, its `running_mean`/`running_var`
  -> state `mean`/`var` (the same eps, 1e-5; PyTorch's momentum 0.1 is fcnn's 0.9);
  `num_batches_tracked` is accepted and ignored (fcnn's update does not count batches);
- keys that are missing, unknown, or of the wrong shape are one ValueError that lists them
  (the first 12 of each kind, and how many in all): nothing is skipped, nothing is guessed.

The networks (`SUPPORTED`): `resnet18/34/50/101/152` (torchvision's ResNet, v1.5 for the
bottleneck nets), `vgg11/13/16/19` and `vgg11_bn ... vgg19_bn`, and `alexnet_torchvision`
(torchvision's `alexnet`). Each names its torchvision counterpart, whose maths fcnn's model
repeats exactly: the same logits and the same gradients (tests/test_weights.py, in float64,
against PyTorch twins of each family).

Files: `load_file` reads a `.safetensors` file with the `safetensors` package's numpy API (no
torch, no pickle: safe to open from anyone) and `save_file` writes one atomically. A pickled
PyTorch checkpoint (`.pth`, `.pt`) is read only through `torch.load(weights_only=True)` when
torch is installed; without torch it is refused: fcnn never unpickles a file itself. fcnn's own
checkpoints (`fcnn.checkpoint`) are a separate format and stay as they are.

    state_dict = weights.load_file("resnet50.safetensors")
    params, state = weights.from_torch("resnet50", state_dict)
    logits = models.resnet50().apply(params, x, state=state)[0]
    weights.save_file("copy.safetensors", weights.to_torch("resnet50", params, state))
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _files
from fcnn.layers import Layer

# fcnn model name -> the torchvision constructor with the same maths and names
SUPPORTED = {
    **{f"resnet{d}": f"resnet{d}" for d in (18, 34, 50, 101, 152)},
    **{f"vgg{d}": f"vgg{d}" for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": f"vgg{d}_bn" for d in (11, 13, 16, 19)},
    "alexnet_torchvision": "alexnet",
}

_RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                  152: (3, 8, 36, 3)}
_KIND = {"conv": "Conv2D", "bn": "BatchNorm", "linear": "Dense"}


class Entry(NamedTuple):
    """One torchvision module with parameters, and where its arrays live in fcnn's trees."""

    prefix: str  # "layer1.0.conv1"
    kind: str  # "conv", "bn" or "linear"
    path: tuple[int, ...]  # the fcnn layer's position in params (and state, for a BatchNorm)
    flatten: tuple[int, ...] | None  # a Linear after a flatten: the (H, W, C) map it reads


# ------------------------------------------------------------------ torchvision's module names


def _torch_modules(name: str) -> Iterator[tuple[str, str]]:
    """`(prefix, kind)` of each of torchvision's modules with parameters, in its state dict's
    order (the order fcnn's models hold them in)."""
    if name.startswith("resnet"):
        depth = int(name[len("resnet"):])
        bottleneck = depth >= 50
        yield "conv1", "conv"
        yield "bn1", "bn"
        for stage, n in enumerate(_RESNET_BLOCKS[depth], start=1):
            for b in range(n):
                block = f"layer{stage}.{b}"
                for j in range(1, 4 if bottleneck else 3):
                    yield f"{block}.conv{j}", "conv"
                    yield f"{block}.bn{j}", "bn"
                if b == 0 and (stage > 1 or bottleneck):  # where the shape changes
                    yield f"{block}.downsample.0", "conv"
                    yield f"{block}.downsample.1", "bn"
        yield "fc", "linear"
    elif name.startswith("vgg"):
        from models.vgg import CONFIGS

        depth, bn = int(name[3:5]), name.endswith("_bn")
        config = {11: "A", 13: "B", 16: "D", 19: "E"}[depth]
        i = 0  # the index in torchvision's `features` Sequential
        for item in CONFIGS[config]:
            if item == "M":
                i += 1
                continue
            yield f"features.{i}", "conv"
            if bn:
                yield f"features.{i + 1}", "bn"
            i += 3 if bn else 2  # conv, (bn,) ReLU
        for j in (0, 3, 6):  # Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
            yield f"classifier.{j}", "linear"
    elif name == "alexnet_torchvision":
        for j in (0, 3, 6, 8, 10):
            yield f"features.{j}", "conv"
        for j in (1, 4, 6):  # Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
            yield f"classifier.{j}", "linear"


# ------------------------------------------------------------------- fcnn's layers, in order


def _fcnn_leaves(layer: Layer, input_shape) -> list[tuple[str, tuple[int, ...], tuple | None]]:
    """`(kind, path, flatten)` of each Conv2D, BatchNorm and Dense in `layer`, in params order.
    `flatten` is, for a Dense that reads a Flatten's output (through shape-keeping layers such
    as Dropout), the `(H, W, C)` shape that Flatten flattened."""
    out = []
    pending = [None]  # the (H, W, C) of a Flatten whose output no layer has changed yet

    def walk(layer, path, shape):
        info = layer.info
        if info.kind == "serial":
            for i, child in enumerate(info.children):
                shape = walk(child, (*path, i), shape)
            return shape
        if info.kind == "residual":
            out_shape = info.shape(shape)
            for i, child in enumerate(info.children):
                pending[0] = None
                walk(child, (*path, i), shape)
            pending[0] = None
            return out_shape
        if info.children:
            raise ValueError(f"fcnn.weights: a {info.kind} combinator has no torchvision "
                             "counterpart here.")
        new = info.shape(shape)
        if info.kind == "Flatten":
            pending[0] = tuple(shape) if len(shape) == 3 else None
        elif info.kind == "Dense":
            out.append(("Dense", path, pending[0]))
            pending[0] = None
        elif info.kind in ("Conv2D", "BatchNorm"):
            out.append((info.kind, path, None))
            pending[0] = None
        elif tuple(new) != tuple(shape):
            pending[0] = None
        return new

    walk(layer, (), tuple(input_shape))
    return out


# -------------------------------------------------------------------------- the conversions


def _model(name: str, num_classes: int) -> Layer:
    import models

    if name not in SUPPORTED:
        raise ValueError(f"fcnn.weights: no torchvision counterpart for model {name!r}; "
                         f"supported: {', '.join(SUPPORTED)}.")
    return getattr(models, name)(num_classes)


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"fcnn.weights: `num_classes` must be an int >= 1, got {num_classes!r}.")
    return int(num_classes)


def entries(name: str, input_shape=None, num_classes: int = 1000) -> list[Entry]:
    """torchvision's modules of `name` paired with fcnn's layers, in order: the whole mapping,
    one `Entry` per module with parameters (`prefix` names its keys: `prefix.weight`, ...)."""
    import models

    model = _model(name, num_classes)
    shape = models.INPUT_SHAPES[name] if input_shape is None else tuple(input_shape)
    ours, theirs = _fcnn_leaves(model, shape), list(_torch_modules(name))
    if [k for k, _, _ in ours] != [_KIND[k] for _, k in theirs]:  # fcnn's own models: a bug
        raise AssertionError(f"fcnn.weights: models.{name} and torchvision's {SUPPORTED[name]} "
                             "no longer have the same layers.")
    return [Entry(prefix, kind, path, flatten)
            for (prefix, kind), (_, path, flatten) in zip(theirs, ours)]


def _at(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def _torch_shapes(entry: Entry, params, state) -> dict[str, tuple[int, ...]]:
    """The torchvision key -> shape of each array of `entry`, from fcnn's shapes."""
    p = _at(params, entry.path)
    if entry.kind == "conv":
        kh, kw, c_in, c_out = p["w"].shape
        keys = {"weight": (c_out, c_in, kh, kw)}
        if "b" in p:
            keys["bias"] = tuple(p["b"].shape)
    elif entry.kind == "linear":
        n_in, n_out = p["w"].shape
        keys = {"weight": (n_out, n_in)}
        if "b" in p:
            keys["bias"] = tuple(p["b"].shape)
    else:
        (c,) = p["gamma"].shape
        keys = {k: (c,) for k in ("weight", "bias", "running_mean", "running_var")}
    return {f"{entry.prefix}.{k}": v for k, v in keys.items()}


def _tensor_numpy(tensor) -> np.ndarray:
    """A torch tensor as a numpy array of its dtype (bfloat16 through ml_dtypes, which numpy
    lacks), without importing torch unless the tensor is bfloat16."""
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":
        import torch

        return tensor.view(torch.int16).numpy().view(jnp.bfloat16)
    return tensor.numpy()


def _numpy(value, key: str) -> np.ndarray:
    array = np.asarray(_tensor_numpy(value) if hasattr(value, "detach") else value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"fcnn.weights: `{key}` must hold floating-point values, got dtype "
                        f"{array.dtype}.")
    return array


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
    return f"{title}: {shown}"


def _template(name, num_classes, input_shape):
    import models

    model = _model(name, num_classes)
    shape = models.INPUT_SHAPES[name] if input_shape is None else tuple(input_shape)
    params = jax.eval_shape(lambda k: model.init(k, shape)[0], jax.random.key(0))
    state = jax.eval_shape(lambda: model.init_state(shape))
    return params, state


def from_torch(name: str, state_dict: Mapping, *, num_classes: int | None = None,
               input_shape=None) -> tuple:
    """`(params, state)` of `models.<name>(num_classes)` from a PyTorch state dict of
    torchvision's counterpart (`SUPPORTED[name]`).

    Args:
      name: an fcnn model name in `SUPPORTED` ("resnet50", "vgg16_bn", "alexnet_torchvision").
      state_dict: names -> arrays (numpy arrays, torch tensors, anything `np.asarray` takes),
        as `torch_model.state_dict()` or `load_file` gives.
      num_classes: the classifier's outputs; by default read from the state dict's last
        Linear (1000 for ImageNet, fewer for a fine-tuned head).
      input_shape: per-example input, default `models.INPUT_SHAPES[name]` (224x224x3). Only
        VGG's and AlexNet's first Linear depends on it.

    Returns:
      `(params, state)` as jax arrays in the state dict's dtype (float32 for torchvision's
      files); `state` is `()` for the networks without batch norm.

    Raises:
      ValueError: `name` is not supported, or keys are missing, unknown or mis-shaped (the
        message lists each one with the shape expected and the shape given).
      TypeError: an array is not floating point.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError("fcnn.weights.from_torch: `state_dict` must be a mapping of names to "
                        f"arrays, got {type(state_dict).__name__}.")
    table = entries(name, input_shape)
    last = f"{table[-1].prefix}.weight"
    if num_classes is None:
        weight = state_dict.get(last)
        num_classes = int(np.shape(weight)[0]) if weight is not None and np.ndim(weight) == 2 \
            else 1000
    num_classes = _check_num_classes(num_classes)
    params_t, state_t = _template(name, num_classes, input_shape)

    expected, ignored = {}, set()
    for entry in table:
        expected.update(_torch_shapes(entry, params_t, state_t))
        if entry.kind == "bn":
            ignored.add(f"{entry.prefix}.num_batches_tracked")
    given = {str(k): v for k, v in state_dict.items()}
    missing = [k for k in expected if k not in given]
    unknown = [k for k in given if k not in expected and k not in ignored]
    wrong = [f"{k} (expected {expected[k]}, got {tuple(np.shape(given[k]))})"
             for k in expected if k in given and tuple(np.shape(given[k])) != expected[k]]
    if missing or unknown or wrong:
        lines = [f"fcnn.weights.from_torch: the state dict does not fit models.{name}"
                 f"(num_classes={num_classes}), torchvision's {SUPPORTED[name]}."]
        if missing:
            lines.append(_listing(f"missing keys ({len(missing)})", missing))
        if unknown:
            lines.append(_listing(f"unknown keys ({len(unknown)})", unknown))
            if all(k.startswith("module.") for k in given):
                lines.append("Every key starts with 'module.' (a model saved from inside "
                             "DataParallel): strip that prefix first.")
        if wrong:
            lines.append(_listing(f"wrong shapes ({len(wrong)})", wrong))
        raise ValueError("\n".join(lines))

    arrays = {k: _numpy(given[k], k) for k in expected}
    params, state = _thaw(params_t), _thaw(state_t)  # every leaf is replaced below
    for entry in table:
        get = lambda key, e=entry: arrays[f"{e.prefix}.{key}"]  # noqa: E731
        target = _at(params, entry.path)
        if entry.kind == "conv":
            target["w"] = get("weight").transpose(2, 3, 1, 0)
        elif entry.kind == "linear":
            w = get("weight")
            if entry.flatten is not None:  # PyTorch's inputs in (C, H, W) order, fcnn's (H, W, C)
                h, wd, c = entry.flatten
                w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            target["w"] = w.T
        else:
            target["gamma"], target["beta"] = get("weight"), get("bias")
            s = _at(state, entry.path)
            s["mean"], s["var"] = get("running_mean"), get("running_var")
        if entry.kind != "bn" and "b" in _at(params_t, entry.path):
            target["b"] = get("bias")
    as_jax = lambda a: jnp.asarray(np.ascontiguousarray(a))  # noqa: E731
    return jax.tree_util.tree_map(as_jax, _freeze(params)), \
        jax.tree_util.tree_map(as_jax, _freeze(state))


def to_torch(name: str, params, state=(), *, num_batches_tracked: int = 0,
             input_shape=None) -> dict[str, np.ndarray]:
    """The PyTorch state dict of torchvision's counterpart of `models.<name>` with these
    `params` and `state`: names -> numpy arrays, in torchvision's order, each array a fresh
    C-contiguous copy (what `save_file` writes and `torch_model.load_state_dict` takes after
    `torch.from_numpy`). The inverse of `from_torch`: the round trip gives back every array
    bit for bit. A BatchNorm's `num_batches_tracked` (which fcnn does not count) is written as
    the int64 `num_batches_tracked` given.

    Raises:
      ValueError: `name` is not supported, or `params`/`state` do not have the model's
        structure and shapes (the message names the layer and the torchvision key).
    """
    table = entries(name, input_shape)
    try:
        w_last = _at(params, table[-1].path)["w"]
        num_classes = int(np.shape(w_last)[-1])
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"fcnn.weights.to_torch: `params` do not have the structure of "
                         f"models.{name}: no Dense weight at {table[-1].path} ({e!r}).") from None
    params_t, state_t = _template(name, num_classes, input_shape)
    if isinstance(num_batches_tracked, bool) or not isinstance(
            num_batches_tracked, (int, np.integer)) or num_batches_tracked < 0:
        raise ValueError(f"fcnn.weights.to_torch: `num_batches_tracked` must be an int >= 0, "
                         f"got {num_batches_tracked!r}.")
    for tree, template, what in ((params, params_t, "params"), (state, state_t, "state")):
        want = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(template)]
        got = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
        if want != got:
            where = next((f"expected {w}, got {g}" for w, g in zip(want, got) if w != g),
                         f"expected {len(want)} arrays, got {len(got)}")
            raise ValueError(f"fcnn.weights.to_torch: `{what}` do not have the structure of "
                             f"models.{name}(num_classes={num_classes}): {where}.")
    out = {}
    for entry in table:
        p = _at(params, entry.path)
        want = _torch_shapes(entry, params_t, state_t)
        if entry.kind == "conv":
            arrays = {"weight": np.asarray(p["w"]).transpose(3, 2, 0, 1)}
        elif entry.kind == "linear":
            w = np.asarray(p["w"]).T
            if entry.flatten is not None:
                h, wd, c = entry.flatten
                w = w.reshape(w.shape[0], h, wd, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
            arrays = {"weight": w}
        else:
            s = _at(state, entry.path)
            arrays = {"weight": np.asarray(p["gamma"]), "bias": np.asarray(p["beta"]),
                      "running_mean": np.asarray(s["mean"]), "running_var": np.asarray(s["var"])}
        if entry.kind != "bn" and "b" in p:
            arrays["bias"] = np.asarray(p["b"])
        for key, array in arrays.items():
            full = f"{entry.prefix}.{key}"
            if tuple(array.shape) != want[full]:
                raise ValueError(f"fcnn.weights.to_torch: `{full}` (the layer at {entry.path}) "
                                 f"should have shape {want[full]}, got {tuple(array.shape)}.")
            out[full] = np.ascontiguousarray(array)
        if entry.kind == "bn":
            out[f"{entry.prefix}.num_batches_tracked"] = np.asarray(num_batches_tracked,
                                                                     np.int64)
    return out


def _thaw(tree):
    """Nested tuples -> lists, dicts copied (so the arrays can be put in place)."""
    if isinstance(tree, (tuple, list)):
        return [_thaw(t) for t in tree]
    if isinstance(tree, dict):
        return {k: _thaw(v) for k, v in tree.items()}
    return tree


def _freeze(tree):
    if isinstance(tree, list):
        return tuple(_freeze(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _freeze(v) for k, v in tree.items()}
    return tree


# ------------------------------------------------------------------------------------ files

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


def _sniff(path: Path) -> str:
    """"safetensors", "torch" (a zip or pickle: PyTorch's formats) or "unknown". safetensors
    first: its 8-byte little-endian header length may itself begin with b"PK" or 0x80."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "torch"
    return "safetensors" if head[8:9] == b"{" else "unknown"  # a truncated one: the reader says


def load_file(path) -> dict[str, np.ndarray]:
    """The arrays of a weights file: names -> numpy arrays, in the file's order.

    - `.safetensors`: read with the `safetensors` package's numpy API (no code in the file is
      run; the format holds only a JSON header and raw arrays).
    - A pickled PyTorch checkpoint (`.pth`, `.pt`, ...): read with
      `torch.load(path, map_location="cpu", weights_only=True)` (PyTorch's restricted
      unpickler: tensors and containers only) when torch is installed, else refused with a
      ValueError saying so. A checkpoint that holds `{"state_dict": ...}` or `{"model": ...}`
      around the state dict is unwrapped.

    The format is read from the file's first bytes, not its name.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"fcnn.weights.load_file: `path` must be a str or os.PathLike, got "
                        f"{type(path).__name__}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fcnn.weights.load_file: no file {str(path)!r}.")
    kind = _sniff(path)
    if kind == "safetensors":
        from safetensors.numpy import load_file as read

        try:
            return dict(read(str(path)))
        except Exception as e:  # the package's own errors: a truncated or corrupt file
            raise ValueError(f"fcnn.weights.load_file: {str(path)!r} is not a readable "
                             f"safetensors file ({type(e).__name__}: {e}).") from e
    if kind == "torch" or path.suffix in _PICKLE_SUFFIXES:
        return _load_pickled(path)
    raise ValueError(f"fcnn.weights.load_file: {str(path)!r} is neither a safetensors file nor "
                     "a PyTorch checkpoint (its first bytes are neither).")


def _load_pickled(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ValueError(
            f"fcnn.weights.load_file: {str(path)!r} is a pickled PyTorch checkpoint. fcnn "
            "never unpickles a file itself (unpickling runs code from the file); with torch "
            "installed it is read through torch.load(weights_only=True). Install torch, or "
            "convert the file once to .safetensors where torch is installed.") from None
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"fcnn.weights.load_file: torch.load(weights_only=True) refused "
                         f"{str(path)!r} ({type(e).__name__}: {e}).") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not all(hasattr(v, "detach") for v in
                                                  loaded.values()):
        raise ValueError(f"fcnn.weights.load_file: {str(path)!r} holds a "
                         f"{type(loaded).__name__}, not a state dict (names -> tensors).")
    return {str(k): _tensor_numpy(v) for k, v in loaded.items()}


def save_file(path, arrays: Mapping, metadata: Mapping[str, str] | None = None) -> None:
    """Write `arrays` (names -> arrays) as a `.safetensors` file, atomically: a temporary
    file beside `path`, synced, then renamed over it, so a crash leaves the old file or the
    new one, never half of one. `metadata` (str -> str) goes in the file's header. The arrays
    are written C-contiguous in their own dtype (numpy's: float16/32/64, ints, bool)."""
    from safetensors.numpy import save

    if not isinstance(arrays, Mapping):
        raise TypeError(f"fcnn.weights.save_file: `arrays` must be a mapping of names to "
                        f"arrays, got {type(arrays).__name__}.")
    tensors = {}
    for k, v in arrays.items():
        if not isinstance(k, str):
            raise TypeError(f"fcnn.weights.save_file: names must be str, got {k!r}.")
        array = np.ascontiguousarray(np.asarray(v))
        if array.dtype.kind not in "biuf":
            raise TypeError(f"fcnn.weights.save_file: `{k}` must be a numeric array, got dtype "
                            f"{array.dtype}.")
        tensors[k] = array
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in metadata.items()):
        raise TypeError("fcnn.weights.save_file: `metadata` must map str to str.")
    data = save(tensors, metadata=None if metadata is None else dict(metadata))
    _files.atomic_write(path, lambda f: f.write(data))


def load(name: str, path, *, input_shape=None) -> tuple[Layer, object, object]:
    """`(model, params, state)`: `models.<name>` with the number of classes the file's
    classifier has, and its weights from the file at `path` (`load_file`, `from_torch`)."""
    params, state = from_torch(name, load_file(path), input_shape=input_shape)
    classifier = _at(params, entries(name, input_shape)[-1].path)["w"]
    return _model(name, int(classifier.shape[-1])), params, state
