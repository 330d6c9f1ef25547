"""The layer contract: `with_ops`, typed `LayerInfo` / `Window`, bare user layers, validation."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcnn
from fcnn import layers as L
from fcnn import ops
from fcnn import reference as R
from fcnn.testing import assert_close, rule_bindings
from tests.strategies import normal

KEY = jax.random.key(0)


def every_leaf():
    """One of each leaf kind that calls an op, inside every combinator."""
    return L.serial(
        L.Conv2D(4, 3, padding=1), L.LeakyReLU(0.1), L.LocalResponseNorm(3),
        L.residual(L.serial(L.Conv2D(4, 3, padding="same"), L.Tanh())),
        L.parallel(L.MaxPool2D(2), L.serial(L.AvgPool2D(3, 2, padding=((0, 1), (1, 0))),
                                            L.Sigmoid())),
    )


def model():
    return L.serial(every_leaf(), _first(), L.ReLU(), L.Flatten(), L.Dropout(0.5), L.Dense(3))


def _first():
    """A user's bare Layer: the first of parallel's outputs."""
    return L.Layer(lambda key, shape: ({}, shape[0]), lambda params, x, **kw: x[0])


def _custom_vjps(fn, *args):
    return rule_bindings(fn, *args)


# ----------------------------------------------------------------------------- with_ops


def test_with_ops_runs_the_oracle_with_autodiff_gradients():
    net = model()
    oracle = L.with_ops(net, R)
    params, out = net.init(KEY, (8, 8, 2))
    ref_params, ref_out = oracle.init(KEY, (8, 8, 2))
    assert out == ref_out == (3,)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # same init
    x = normal(0, (2, 8, 8, 2), jnp.float32)
    assert_close(oracle.apply(params, x), net.apply(params, x), "forward", rtol=1e-5, atol=1e-5)

    def grad_of(layer):
        return jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))

    assert _custom_vjps(grad_of(net), params) > 0
    assert _custom_vjps(grad_of(oracle), params) == 0
    for a, b in zip(jax.tree_util.tree_leaves(grad_of(net)(params)),
                    jax.tree_util.tree_leaves(grad_of(oracle)(params)), strict=True):
        assert_close(a, b, "gradient", rtol=1e-4, atol=1e-4)


def test_with_ops_calls_the_module_for_every_leaf_and_leaves_the_original_alone():
    calls = []

    def spy(name):
        def fn(*args, **kwargs):
            calls.append(name)
            return getattr(R, name)(*args, **kwargs)
        return fn

    names = ("conv2d", "leaky_relu", "local_response_norm", "tanh", "max_pool2d", "avg_pool2d",
             "sigmoid", "relu", "dense", "dropout")
    net = model()
    before = (net.apply, net.info, [c.apply for c in net.info.children])
    spied = L.with_ops(net, types.SimpleNamespace(**{n: spy(n) for n in names}))
    params, _ = net.init(KEY, (8, 8, 2))
    x = normal(1, (8, 8, 2), jnp.float32)
    spied.apply(params, x, key=KEY, train=True)
    assert sorted(set(calls)) == sorted(names) and calls.count("conv2d") == 2
    calls.clear()
    net.apply(params, x, key=KEY, train=True)
    assert calls == []  # the original still calls fcnn.ops
    assert (net.apply, net.info, [c.apply for c in net.info.children]) == before
    assert spied.apply is not net.apply
    assert all(a is not b for a, b in zip(spied.info.children, net.info.children)
               if a.info.kind != "Layer")
    assert spied.info.children[1] is net.info.children[1]  # the bare layer, kept as is
    assert repr(spied) == repr(net)
    back = L.with_ops(spied, ops)
    assert _custom_vjps(lambda p: back.apply(p, x), params) > 0


def test_with_ops_errors_name_the_layer_and_the_function():
    partial_module = types.SimpleNamespace(conv2d=R.conv2d, leaky_relu=R.leaky_relu)
    with pytest.raises(L.LayerError, match=r"^serial\[2\] LocalResponseNorm: the ops module "
                                           r"'SimpleNamespace' has no function "
                                           r"`local_response_norm`\.$"):
        L.with_ops(every_leaf(), partial_module)
    nested = L.serial(L.ReLU(), L.residual(L.Conv2D(2, 3, padding=1, algorithm="taps")))
    with pytest.raises(L.LayerError, match=r"^serial\[1\]\.residual\.block Conv2D: `algorithm`="
                                           r"'taps' is passed to `conv2d`, but "
                                           r"fcnn\.reference\.conv2d takes no `algorithm`"):
        L.with_ops(nested, R)
    assert L.with_ops(nested, ops).info.children[1].info.kind == "residual"
    no_groups = types.SimpleNamespace(conv2d=lambda x, w, b=None, *, stride, padding, dilation: x)
    with pytest.raises(L.LayerError, match=r"^Conv2D: `groups`=1 is passed to `conv2d`"):
        L.with_ops(L.Conv2D(2, 3), no_groups)
    with pytest.raises(TypeError, match=r"^with_ops: `layer` must be a Layer"):
        L.with_ops("not a layer", R)


def test_conv_algorithm_reaches_the_op_only_when_named():
    seen = []

    def conv2d(x, w, b=None, **kwargs):
        seen.append(kwargs.get("algorithm"))
        return R.conv2d(x, w, b, **{k: v for k, v in kwargs.items() if k != "algorithm"})

    module = types.SimpleNamespace(conv2d=conv2d)
    x = normal(2, (6, 6, 1), jnp.float32)
    for algorithm in ("auto", "im2col"):
        conv = L.Conv2D(2, 3, algorithm=algorithm)
        params, _ = conv.init(KEY, (6, 6, 1))
        L.with_ops(conv, module).apply(params, x)
    assert seen == [None, "im2col"]


# ----------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("layer,window", [
    (L.Conv2D(4, 3), L.Window((3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1))),
    (L.Conv2D(4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=2),
     L.Window((3, 5), (2, 1), ((1, 1), (2, 2)), (2, 2))),
    (L.Conv2D(4, 3, padding=((0, 1), (2, 3))), L.Window((3, 3), (1, 1), ((0, 1), (2, 3)), (1, 1))),
    (L.Conv2D(4, 3, padding=np.array([[0, 1], [2, 3]])),
     L.Window((3, 3), (1, 1), ((0, 1), (2, 3)), (1, 1))),
    (L.Conv2D(4, 3, stride=2, padding="same"), L.Window((3, 3), (2, 2), "SAME", (1, 1))),
    (L.MaxPool2D(2), L.Window((2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1))),
    (L.MaxPool2D(3, 2, padding=1), L.Window((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1))),
    (L.AvgPool2D((2, 3), stride=1, padding="Valid"), L.Window((2, 3), (1, 1), "VALID", (1, 1))),
], ids=repr)
def test_window_is_normalised_at_construction(layer, window):
    assert layer.info.window == window
    pads = () if isinstance(window.padding, str) else window.padding
    assert all(type(v) is int for pair in (*window[:2], *pads, window.dilation) for v in pair)


def test_window_resolves_size_dependent_padding():
    same = L.Conv2D(4, 3, stride=2, padding="SAME").info.window
    assert same.pads((7, 8)) == ((1, 1), (0, 1))  # outputs ceil(7/2) = 4 and 8/2 = 4
    assert L.Window((3, 3), (1, 1), "VALID").pads((5, 5)) == ((0, 0), (0, 0))
    assert L.Window((3, 3), (1, 1), "SAME", (2, 2)).effective == (5, 5)


def test_layer_info_fields():
    assert L.LayerInfo._fields[:5] == ("kind", "config", "window", "children", "shape")
    conv, relu = L.Conv2D(4, 3, padding=1), L.ReLU()
    net = L.serial(conv, relu)
    assert net.info.kind == "serial" and net.info.children == (conv, relu)
    assert net.info.window is None and relu.info.window is None
    assert L.Dense(3).info.kind == "Dense" and L.Dense(3).info.window is None
    assert conv.info.config["algorithm"] == "auto" and conv.info.shape((8, 8, 2)) == (8, 8, 4)
    assert L.residual(conv).info.config == {"identity_shortcut": True}


@pytest.mark.parametrize("make,exc,pattern", [
    (lambda: L.Conv2D(4, 3, algorithm="fft"), ValueError,
     r"^Conv2D: `algorithm` must be one of 'auto', 'xla', 'phase', 'im2col', 'taps', "
     r"(?:'onednn', )?got 'fft'"),  # oneDNN where its native part is built
    (lambda: L.Conv2D(4, 3, algorithm=None), TypeError,
     r"^Conv2D: `algorithm` must be one of .*, got NoneType None\.$"),
    (lambda: L.AvgPool2D(2, padding="full"), ValueError,
     r"^AvgPool2D: `padding` string must be 'SAME' or 'VALID', got 'full'"),
    (lambda: L.MaxPool2D(2, padding=1.5), TypeError, r"^MaxPool2D: `padding` must be an int"),
    (lambda: L.Conv2D(4, 3, padding=((1, 1), (1, -1))), ValueError,
     r"^Conv2D: `padding` must be non-negative"),
    (lambda: L.serial(L.ReLU(), "relu"), TypeError,
     r"^serial: `layers\[1\]` must be a Layer \(init, apply\), got str 'relu'\.$"),
    (lambda: L.residual(L.ReLU(), 3), TypeError, r"^residual: `shortcut` must be a Layer"),
])
def test_configuration_is_checked_at_construction(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


# ----------------------------------------------------------------------------- bare layers


def scale():
    """A user's bare Layer: a learnable per-channel scale."""

    def init(key, input_shape):
        return {"s": jnp.ones(input_shape[-1], jnp.float32)}, tuple(input_shape)

    def apply(params, x, **kwargs):
        return x * params["s"].reshape((1,) * (x.ndim - 1) + (-1,))

    return L.Layer(init, apply)


def halve():
    """A user's bare Layer that changes the shape: every other row and column."""
    return L.Layer(lambda key, s: ({}, (-(-s[0] // 2), -(-s[1] // 2), s[2])),
                   lambda params, x, **kwargs: x[..., ::2, ::2, :])


def test_bare_layer_info_and_repr():
    bare = scale()
    assert bare.info.kind == "Layer" and bare.info.window is None and bare.info.rebind is None
    assert bare.info.shape((5, 5, 3)) == (5, 5, 3) and halve().info.shape((5, 6, 2)) == (3, 3, 2)
    assert repr(bare) == "Layer(scale.<locals>.init, scale.<locals>.apply)"
    assert repr(L.serial(bare)).startswith("serial(Layer(scale.<locals>.init")
    assert L.with_ops(bare, R) is bare
    conv = L.Conv2D(3, 3)
    mixed = L.Layer(conv.init, lambda params, x, **kw: x)  # Conv2D's init, someone else's apply
    assert mixed.info.kind == "Layer" and L.with_ops(mixed, R) is mixed
    assert conv.info.kind == "Conv2D" and L.Layer(*conv).info.kind == "Conv2D"


def test_bare_layers_inside_combinators():
    net = L.serial(L.Conv2D(3, 3, padding=1), halve(),
                   L.residual(scale(), L.serial(scale(), L.ReLU())),
                   L.parallel(scale(), L.Conv2D(2, 1)))
    assert net.info.shape((6, 6, 1)) == ((3, 3, 3), (3, 3, 2))
    params, out = net.init(KEY, (6, 6, 1))
    assert out == ((3, 3, 3), (3, 3, 2))
    x = normal(3, (2, 6, 6, 1), jnp.float32)
    ys = net.apply(params, x)
    h = L.Conv2D(3, 3, padding=1).apply(params[0], x)[:, ::2, ::2]
    assert_close(ys[0], h + jnp.maximum(h, 0), "residual of bare layers")
    assert_close(L.with_ops(net, R).apply(params, x)[1], ys[1], "rebound around bare layers",
                 rtol=1e-5, atol=1e-5)
    with pytest.raises(L.LayerError, match=r"^residual: block output \(4, 4, 3\) and shortcut "
                                           r"output \(8, 8, 3\)"):
        L.residual(halve()).init(KEY, (8, 8, 3))


def test_bare_layers_in_summary_and_receptive_field():
    net = L.serial(L.Conv2D(3, 3), scale(), L.MaxPool2D(2), halve(), L.Conv2D(2, 3, padding=1))
    s = fcnn.summary(net, (12, 12, 1))
    rows = {r.name: r for r in s.rows}
    assert list(rows) == ["Input", "0 Conv2D", "1 Layer", "2 MaxPool2D", "3 Layer", "4 Conv2D"]
    assert rows["1 Layer"].params == 3 and rows["1 Layer"].output_shape == (10, 10, 3)
    assert rows["3 Layer"].params == 0 and rows["3 Layer"].output_shape == (3, 3, 3)
    assert rows["1 Layer"].flops == rows["1 Layer"].activations == 0
    assert "receptive field taken as unchanged" in rows["1 Layer"].note
    # fields: 3 -> (bare: 3) -> pool 4, jump 2 -> (bare: 4, jump 2) -> 3x3: 4 + 2 * 2 = 8
    assert [r.receptive_field for r in s.rows[1:]] == [(3, 3), (3, 3), (4, 4), (4, 4), (8, 8)]
    assert fcnn.shapes.receptive_field(net, (12, 12, 1)) == (8, 8)
    params, _ = net.init(KEY, (12, 12, 1))
    assert s.total_params == sum(p.size for p in jax.tree_util.tree_leaves(params))
