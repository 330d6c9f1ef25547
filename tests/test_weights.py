"""fcnn.weights: torchvision state dicts in and out, proven on each family in float64.

For ResNet-18 (basic blocks), ResNet-50 (bottleneck, v1.5), VGG-11 with batch norm and
torchvision's AlexNet (the first Linear after a (C, H, W) flatten), a state dict of random
weights is converted and fcnn's logits compared with two independent computations on the
state dict's own arrays: a plain-lax interpreter of torchvision's networks in NCHW/OIHW (always)
and PyTorch twins written here with torchvision's module names (when torch imports): eval
logits; train-mode logits, every gradient and the new running statistics; the round trip
to_torch(from_torch(sd)) == sd bit for bit. Inputs are smaller than ImageNet's to keep the suite
fast (the ResNets and VGG take any size; AlexNet at 99x99 still flattens a 2x2 map, so the
flatten's reordering is exercised); the thorough profile adds every supported network at
224x224 (eval logits and the round trip). Then the refusals (missing, unknown, mis-shaped
keys) and safetensors files written by the `safetensors` package and read by fcnn, and the
other way.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import models
from fcnn import weights
from models.vgg import CONFIGS

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
F64 = jnp.float64


def _random_state_dict(name, input_shape, num_classes, seed=0):
    """Random torch-layout weights of every key of `name` (float64; BatchNorm statistics with
    a positive variance), made from the name table only: no fcnn params involved."""
    rng = np.random.default_rng(seed)
    params, state = weights._template(name, num_classes, input_shape)
    sd = {}
    for entry in weights.entries(name, input_shape, num_classes):
        for key, shape in weights._torch_shapes(entry, params, state).items():
            fan = np.prod(shape[1:]) if len(shape) > 1 else 1
            value = rng.normal(size=shape) / np.sqrt(fan)
            if key.endswith("running_var"):
                value = rng.uniform(0.5, 2.0, size=shape)
            elif key.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "1.weight")) \
                    and len(shape) == 1:
                value = rng.uniform(0.5, 1.5, size=shape)
            sd[key] = value
        if entry.kind == "bn":
            sd[f"{entry.prefix}.num_batches_tracked"] = np.asarray(0, np.int64)
    return sd


# -------------------------------------------------- torchvision's networks in NCHW, plain lax


def _conv(x, sd, prefix, stride=1, padding=0):
    y = lax.conv_general_dilated(x, jnp.asarray(sd[f"{prefix}.weight"]), (stride, stride),
                                 [(padding, padding)] * 2,
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                 precision=lax.Precision.HIGHEST)
    bias = sd.get(f"{prefix}.bias")
    return y if bias is None else y + jnp.asarray(bias)[None, :, None, None]


def _bn(x, sd, prefix):
    g = lambda k: jnp.asarray(sd[f"{prefix}.{k}"])[None, :, None, None]  # noqa: E731
    return (x - g("running_mean")) / jnp.sqrt(g("running_var") + 1e-5) * g("weight") + g("bias")


def _max_pool(x, k, s, p=0):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, k, k), (1, 1, s, s),
                             [(0, 0), (0, 0), (p, p), (p, p)])


def _linear(x, sd, prefix):
    return x @ jnp.asarray(sd[f"{prefix}.weight"]).T + jnp.asarray(sd[f"{prefix}.bias"])[None]


def _torchvision_eval(name, sd, x):
    """Eval-mode logits of torchvision's `SUPPORTED[name]` on NCHW `x`, read off `sd`."""
    relu = jax.nn.relu
    if name.startswith("resnet"):
        depth = int(name[6:])
        x = _max_pool(relu(_bn(_conv(x, sd, "conv1", 2, 3), sd, "bn1")), 3, 2, 1)
        for stage, n in enumerate(weights._RESNET_BLOCKS[depth], start=1):
            for b in range(n):
                p, stride = f"layer{stage}.{b}", 2 if stage > 1 and b == 0 else 1
                skip = x
                if f"{p}.downsample.0.weight" in sd:
                    skip = _bn(_conv(x, sd, f"{p}.downsample.0", stride), sd, f"{p}.downsample.1")
                if depth >= 50:
                    y = relu(_bn(_conv(x, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
                    y = relu(_bn(_conv(y, sd, f"{p}.conv2", stride, 1), sd, f"{p}.bn2"))
                    y = _bn(_conv(y, sd, f"{p}.conv3"), sd, f"{p}.bn3")
                else:
                    y = relu(_bn(_conv(x, sd, f"{p}.conv1", stride, 1), sd, f"{p}.bn1"))
                    y = _bn(_conv(y, sd, f"{p}.conv2", 1, 1), sd, f"{p}.bn2")
                x = relu(y + skip)
        return _linear(x.mean(axis=(2, 3)), sd, "fc")
    if name.startswith("vgg"):
        bn, i = name.endswith("_bn"), 0
        for item in CONFIGS[{11: "A", 13: "B", 16: "D", 19: "E"}[int(name[3:5])]]:
            if item == "M":
                x, i = _max_pool(x, 2, 2), i + 1
                continue
            x = _conv(x, sd, f"features.{i}", 1, 1)
            x = relu(_bn(x, sd, f"features.{i + 1}") if bn else x)
            i += 3 if bn else 2
        x = x.reshape(x.shape[0], -1)  # PyTorch's flatten: (C, H, W) order
        x = relu(_linear(x, sd, "classifier.0"))
        x = relu(_linear(x, sd, "classifier.3"))
        return _linear(x, sd, "classifier.6")
    x = _max_pool(relu(_conv(x, sd, "features.0", 4, 2)), 3, 2)
    x = _max_pool(relu(_conv(x, sd, "features.3", 1, 2)), 3, 2)
    x = relu(_conv(x, sd, "features.6", 1, 1))
    x = relu(_conv(x, sd, "features.8", 1, 1))
    x = _max_pool(relu(_conv(x, sd, "features.10", 1, 1)), 3, 2)
    x = x.reshape(x.shape[0], -1)
    x = relu(_linear(x, sd, "classifier.1"))
    x = relu(_linear(x, sd, "classifier.4"))
    return _linear(x, sd, "classifier.6")


# --------------------------------------------------------- PyTorch twins, torchvision's names


def _torch_twin(name, num_classes):
    """A PyTorch network with torchvision's module names and maths for `name` (torchvision
    itself when it imports), float64, dropout off (train mode is compared batch for batch)."""
    torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch twins "
                                "are skipped (the plain-lax interpreter still runs)")
    nn = torch.nn
    if name.startswith("resnet"):
        depth = int(name[6:])
        bottleneck = depth >= 50

        class Block(nn.Module):
            def __init__(self, c_in, width, stride):
                super().__init__()
                out = 4 * width if bottleneck else width
                if bottleneck:
                    self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
                    self.bn1 = nn.BatchNorm2d(width)
                    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
                    self.bn2 = nn.BatchNorm2d(width)
                    self.conv3 = nn.Conv2d(width, out, 1, bias=False)
                    self.bn3 = nn.BatchNorm2d(out)
                else:
                    self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
                    self.bn1 = nn.BatchNorm2d(width)
                    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
                    self.bn2 = nn.BatchNorm2d(width)
                self.relu = nn.ReLU()
                self.downsample = None
                if stride != 1 or c_in != out:
                    self.downsample = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False),
                                                    nn.BatchNorm2d(out))

            def forward(self, x):
                skip = x if self.downsample is None else self.downsample(x)
                y = self.relu(self.bn1(self.conv1(x)))
                y = self.bn2(self.conv2(y))
                if bottleneck:
                    y = self.bn3(self.conv3(self.relu(y)))
                return self.relu(y + skip)

        class ResNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
                self.bn1 = nn.BatchNorm2d(64)
                self.relu = nn.ReLU()
                self.maxpool = nn.MaxPool2d(3, 2, 1)
                c_in = 64
                for stage, (width, n) in enumerate(zip((64, 128, 256, 512),
                                                       weights._RESNET_BLOCKS[depth]), start=1):
                    blocks = []
                    for b in range(n):
                        blocks.append(Block(c_in, width, 2 if stage > 1 and b == 0 else 1))
                        c_in = 4 * width if bottleneck else width
                    setattr(self, f"layer{stage}", nn.Sequential(*blocks))
                self.fc = nn.Linear(c_in, num_classes)

            def forward(self, x):
                x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
                for stage in range(1, 5):
                    x = getattr(self, f"layer{stage}")(x)
                return self.fc(x.mean(dim=(2, 3)))

        net = ResNet()
    elif name.startswith("vgg"):
        bn, layers, c_in = name.endswith("_bn"), [], 3
        for item in CONFIGS[{11: "A", 13: "B", 16: "D", 19: "E"}[int(name[3:5])]]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(c_in, item, 3, padding=1),
                       *([nn.BatchNorm2d(item)] if bn else []), nn.ReLU()]
            c_in = item

        class VGG(nn.Module):
            def __init__(self, flat):
                super().__init__()
                self.features = nn.Sequential(*layers)
                self.classifier = nn.Sequential(
                    nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(0.0), nn.Linear(4096, 4096),
                    nn.ReLU(), nn.Dropout(0.0), nn.Linear(4096, num_classes))

            def forward(self, x):
                return self.classifier(torch.flatten(self.features(x), 1))

        net = VGG
    else:
        class AlexNet(nn.Module):
            def __init__(self, flat):
                super().__init__()
                self.features = nn.Sequential(
                    nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                    nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                    nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
                self.classifier = nn.Sequential(
                    nn.Dropout(0.0), nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(0.0),
                    nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

            def forward(self, x):
                return self.classifier(torch.flatten(self.features(x), 1))

        net = AlexNet
    return torch, net


# ------------------------------------------------------------------------------------ proof

# ResNet-50's last stage sees a 1x1 map at 32x32: with PyTorch, its training-mode batch
# statistics over 8 examples, not 2 (over 2 values per channel the logits moved 2e-6 relative
# between fcnn and PyTorch: at batch 8, within 1e-9)
BATCH = {"resnet50": 8}
try:
    import torch  # noqa: F401
except ImportError:
    BATCH = {}
CASES = [("resnet18", (32, 32, 3)), ("resnet50", (32, 32, 3)), ("vgg11_bn", (32, 32, 3)),
         ("alexnet_torchvision", (99, 99, 3))]
if THOROUGH:
    CASES += [(name, None) for name in weights.SUPPORTED]


def _close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10 * scale, err_msg=what)


def _fcnn_model(name, num_classes):
    if name.startswith("vgg"):  # dropout off, as in the twins (train mode is compared)
        return models.vgg.vgg({11: "A", 13: "B", 16: "D", 19: "E"}[int(name[3:5])],
                              num_classes, dropout=0.0, batch_norm=name.endswith("_bn"))
    if name == "alexnet_torchvision":
        return models.alexnet_torchvision(num_classes, dropout=0.0)
    return getattr(models, name)(num_classes)


@pytest.mark.parametrize("name,input_shape", CASES)
def test_torchvision_weights_give_torchvisions_logits_and_gradients(name, input_shape):
    num_classes = 10 if input_shape is not None else 1000
    shape = models.INPUT_SHAPES[name] if input_shape is None else input_shape
    sd = _random_state_dict(name, input_shape, num_classes)
    params, state = weights.from_torch(name, sd, input_shape=input_shape)
    assert all(a.dtype == F64 for a in jax.tree_util.tree_leaves((params, state)))

    # the round trip gives back every array, bit for bit, in torchvision's order
    back = weights.to_torch(name, params, state, input_shape=input_shape)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == np.asarray(sd[k]).dtype and np.array_equal(back[k], sd[k]), k

    model = _fcnn_model(name, num_classes)
    full = input_shape is None  # the thorough profile's 224x224 cases: eval logits, 1 image
    x = np.random.default_rng(1).normal(size=(1 if full else BATCH.get(name, 2), *shape))
    x_nchw = x.transpose(0, 3, 1, 2)
    logits = jax.jit(lambda p, s, x: model.apply_with_state(p, s, x)[0])(params, state, x)
    oracle = jax.jit(_torchvision_eval, static_argnums=0)
    floats = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    _close(logits, oracle(name, floats, x_nchw), "eval logits (lax NCHW)")

    torch, net = _torch_twin(name, num_classes)
    if not isinstance(net, torch.nn.Module):
        net = net(np.asarray(sd["classifier.0.weight" if name.startswith("vgg")
                                else "classifier.1.weight"]).shape[1])
    net = net.double()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    net.eval()
    xt = torch.from_numpy(x_nchw.copy())
    with torch.no_grad():
        _close(logits, net(xt).numpy(), "eval logits (PyTorch)")

    if full:
        return
    # train mode: batch statistics, the running statistics' update, every gradient
    cot = np.random.default_rng(2).normal(size=(len(x), num_classes))
    net.train()
    out = net(xt)
    (out * torch.from_numpy(cot)).sum().backward()

    def loss(p, s):
        y, s = model.apply_with_state(p, s, x, train=True, key=jax.random.key(0))
        return jnp.sum(y * cot), (y, s)

    grads, (y, new_state) = jax.jit(jax.grad(loss, has_aux=True))(params, state)
    _close(y, out.detach().numpy(), "train-mode logits")
    named = {k: v.grad.numpy() for k, v in net.named_parameters()}
    buffers = {k: v.numpy() for k, v in net.state_dict().items()}
    want_grads, want_state = weights.from_torch(name, {**buffers, **named},
                                                input_shape=input_shape)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree_util.tree_leaves(want_grads)):
        _close(g, w, f"gradient {jax.tree_util.keystr(path)}")
    for (path, s), w in zip(jax.tree_util.tree_leaves_with_path(new_state),
                            jax.tree_util.tree_leaves(want_state)):
        _close(s, w, f"running statistics {jax.tree_util.keystr(path)}")


# ---------------------------------------------------------------------------- refusals


def _resnet18_dict():
    return _random_state_dict("resnet18", (32, 32, 3), 10)


def test_a_missing_key_is_named():
    sd = _resnet18_dict()
    del sd["layer3.0.downsample.1.running_var"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): layer3\.0\.downsample\.1\."
                                         r"running_var"):
        weights.from_torch("resnet18", sd)


def test_an_unknown_key_is_named_and_a_dataparallel_prefix_explained():
    sd = _resnet18_dict()
    sd["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"unknown keys \(1\): layer5\.0\.conv1\.weight"):
        weights.from_torch("resnet18", sd)
    with pytest.raises(ValueError, match="strip that prefix"):
        weights.from_torch("resnet18", {f"module.{k}": v for k, v in _resnet18_dict().items()})


def test_a_wrong_shape_is_named_with_both_shapes():
    sd = _resnet18_dict()
    sd["layer1.1.conv2.weight"] = np.zeros((64, 64, 1, 3))
    with pytest.raises(ValueError, match=r"wrong shapes \(1\): layer1\.1\.conv2\.weight "
                                         r"\(expected \(64, 64, 3, 3\), got \(64, 64, 1, 3\)\)"):
        weights.from_torch("resnet18", sd)
    # a ResNet-50's dict given as a ResNet-18's: every difference listed, counted
    with pytest.raises(ValueError, match=r"unknown keys \(\d+\).*\(\d+ in all\)"):
        weights.from_torch("resnet18", _random_state_dict("resnet50", None, 10))


def test_other_refusals():
    with pytest.raises(ValueError, match="no torchvision counterpart for model 'lenet5'"):
        weights.from_torch("lenet5", {})
    sd = _resnet18_dict()
    sd["fc.bias"] = np.arange(10)
    with pytest.raises(TypeError, match="`fc.bias` must hold floating-point values"):
        weights.from_torch("resnet18", sd)
    with pytest.raises(TypeError, match="mapping"):
        weights.from_torch("resnet18", [1, 2])
    params, state = weights.from_torch("resnet18", _resnet18_dict())
    with pytest.raises(ValueError, match=r"`state` do not have the structure of models\.resnet18"
                                         r"\(num_classes=10\): expected 40 arrays, got 0"):
        weights.to_torch("resnet18", params, ())


def test_every_supported_name_pairs_with_its_model():
    """The name table of each supported network against its fcnn model's layers, and the
    parameter count the keys add up to (torchvision's published counts)."""
    counts = {"resnet18": 11_689_512, "resnet50": 25_557_032, "resnet152": 60_192_808,
              "vgg16": 138_357_544, "vgg19_bn": 143_678_248, "alexnet_torchvision": 61_100_840}
    for name in weights.SUPPORTED:
        params, state = weights._template(name, 1000, None)
        keys = {}
        for e in weights.entries(name):
            keys.update(weights._torch_shapes(e, params, state))
        learned = sum(int(np.prod(s)) for k, s in keys.items() if "running" not in k)
        assert learned == sum(a.size for a in jax.tree_util.tree_leaves(params)), name
        if name in counts:
            assert learned == counts[name], name


# ------------------------------------------------------------------------------------ files


def test_safetensors_both_ways(tmp_path):
    """A file written by the safetensors package is read by fcnn, and fcnn's file by the
    package, bit for bit; fcnn's write is atomic and its header carries the metadata."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    sd = _random_state_dict("alexnet_torchvision", (99, 99, 3), 10)
    sd = {k: v.astype(np.float32) for k, v in sd.items()}
    theirs = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(sd, str(theirs))
    read = weights.load_file(theirs)
    assert list(read) == sorted(sd) or set(read) == set(sd)
    for k in sd:
        assert read[k].dtype == np.float32 and np.array_equal(read[k], sd[k])
    params, state = weights.from_torch("alexnet_torchvision", read, input_shape=(99, 99, 3))
    ours = tmp_path / "ours.safetensors"
    weights.save_file(ours, weights.to_torch("alexnet_torchvision", params, state,
                                             input_shape=(99, 99, 3)),
                      metadata={"source": "test"})
    again = safetensors_numpy.load_file(str(ours))
    assert set(again) == set(sd) and all(np.array_equal(again[k], sd[k]) for k in sd)
    # converting back reproduces the file itself, byte for byte
    same = tmp_path / "same.safetensors"
    weights.save_file(same, weights.to_torch("alexnet_torchvision", params, state,
                                             input_shape=(99, 99, 3)))
    assert same.read_bytes() == theirs.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    model, p2, _ = weights.load("alexnet_torchvision", ours, input_shape=(99, 99, 3))
    assert model.info.shape((99, 99, 3)) == (10,)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(p2),
                                                    jax.tree_util.tree_leaves(params)))
    with pytest.raises(TypeError, match="metadata"):
        weights.save_file(tmp_path / "m.safetensors", sd, metadata={"a": 1})


def test_file_formats_are_read_from_their_bytes(tmp_path):
    """A safetensors file whose header length begins with 0x80 or b"PK" (a pickle's and a
    zip's first bytes) is still safetensors; bfloat16 arrays are accepted as floating point;
    bad names, values and counters are refused naming the argument."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    for first in (0x80, ord("P")):
        n = next(n for n in range(300)
                 if safetensors_numpy.save({"k" * n: np.zeros(1, np.float32)})[0] == first)
        path = tmp_path / f"h{first}.safetensors"
        path.write_bytes(safetensors_numpy.save({"k" * n: np.zeros(1, np.float32)}))
        assert list(weights.load_file(path)) == ["k" * n]
    assert weights._numpy(np.zeros(2, jnp.bfloat16), "k").dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="load_file: `path` must be a str or os.PathLike"):
        weights.load_file(None)
    with pytest.raises(TypeError, match="save_file: `s` must be a numeric array"):
        weights.save_file(tmp_path / "s.safetensors", {"s": np.array(["x"])})
    params, state = weights.from_torch("resnet18", _resnet18_dict())
    with pytest.raises(ValueError, match="`num_batches_tracked` must be an int >= 0"):
        weights.to_torch("resnet18", params, state, num_batches_tracked=1.5)


def test_bad_files(tmp_path, monkeypatch):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")  # a truncated header
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        weights.load_file(junk)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="neither a safetensors file nor a PyTorch"):
        weights.load_file(text)
    with pytest.raises(FileNotFoundError):
        weights.load_file(tmp_path / "absent.safetensors")
    # a pickled checkpoint without torch: refused, never unpickled by fcnn
    pickled = tmp_path / "model.pth"
    pickled.write_bytes(b"\x80\x04\x95")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ValueError, match=r"never unpickles a file itself.*weights_only=True"):
        weights.load_file(pickled)


def test_pth_through_torch_weights_only(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    sd = _resnet18_dict()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}},
               str(path))
    read = weights.load_file(path)
    assert all(np.array_equal(read[k], sd[k]) for k in sd)
    evil = tmp_path / "evil.pth"
    torch.save({"fn": print}, str(evil))  # a pickle that would call code: weights_only refuses
    with pytest.raises(ValueError, match="weights_only=True"):
        weights.load_file(evil)


def test_the_docs_example_runs(tmp_path, monkeypatch):
    """docs/pretrained.md's example (load, Hessian-vector product, per-example gradients), run
    as written in a scratch directory; the per-example gradients' mean is the batch gradient.
    (The Hessian-vector product's own proof: tests/test_transforms.py.)"""
    if not THOROUGH:
        pytest.skip("the docs example (25 s, three ResNet-18 compiles): the thorough profile; "
                    "the conversion it runs is proven every run above, and the HVP and "
                    "per-example gradients through fcnn's rules in tests/test_transforms.py")
    text = (Path(__file__).resolve().parents[1] / "docs" / "pretrained.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "docs/pretrained.md", "exec"), scope)  # noqa: S102
    loss, params, x, y = (scope[k] for k in ("loss", "params", "x", "y"))
    mean = jax.tree_util.tree_map(lambda g: g.mean(axis=0), scope["per_example"])
    for a, b in zip(jax.tree_util.tree_leaves(mean),
                    jax.tree_util.tree_leaves(jax.jit(jax.grad(loss))(params, x, y))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert np.isfinite(float(scope["vhv"]))
