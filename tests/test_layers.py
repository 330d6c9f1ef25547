"""Layers: the init/apply contract, shapes agreeing three ways, keys, errors, combinators."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import layers as L
from fcnn.testing import assert_close
from tests.strategies import normal

KEY = jax.random.key(0)

LAYERS = [
    (L.Conv2D(4, 3), (8, 7, 2)),
    (L.Conv2D(6, (3, 2), stride=2, padding="SAME", dilation=(1, 2), groups=2), (9, 8, 4)),
    (L.Conv2D(3, 1, use_bias=False), (5, 5, 3)),
    (L.MaxPool2D(2), (8, 6, 3)),
    (L.MaxPool2D(3, 2, padding=1), (7, 7, 2)),
    (L.AvgPool2D((2, 3), stride=1), (6, 6, 2)),
    (L.Dense(5), (12,)),
    (L.Dropout(0.5), (4, 4, 2)),
    (L.ReLU(), (3, 3, 2)),
    (L.LeakyReLU(0.1), (6,)),
    (L.Tanh(), (2, 2, 2)),
    (L.Sigmoid(), (5,)),
    (L.Flatten(), (3, 4, 2)),
    (L.LocalResponseNorm(), (3, 3, 8)),
    (L.BatchNorm(), (3, 3, 4)),  # stateful: in evaluation mode, the running statistics
    (L.BatchNorm(ndim=1), (6,)),
    (L.GroupNorm(2), (3, 2, 4)),
    (L.GroupNorm(3, ndim=1), (6,)),
    (L.GlobalAvgPool2D(), (4, 3, 2)),
    (L.PadChannels(5), (3, 3, 2)),
    (L.serial(L.Conv2D(3, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(4)),
     (6, 6, 1)),
    (L.residual(L.serial(L.Conv2D(2, 3, padding=1), L.ReLU())), (5, 5, 2)),
    (L.residual(L.Conv2D(4, 3, stride=2, padding=1), L.Conv2D(4, 1, stride=2)), (6, 6, 2)),
]
IDS = [repr(layer)[:40] for layer, _ in LAYERS]


def _applier(layer, shape):
    """`apply(params, x) -> y` for any layer: a stateful one with its initial state."""
    state = layer.init_state(shape)
    return lambda params, x: layer.apply_with_state(params, state, x)[0]


@pytest.mark.parametrize("layer,shape", LAYERS, ids=IDS)
def test_init_shape_agrees_with_apply_and_eval_shape(layer, shape):
    params, out_shape = layer.init(KEY, shape)
    apply = _applier(layer, shape)
    x = normal(1, (2, *shape), jnp.float32)
    y = apply(params, x)
    assert y.shape == (2, *out_shape)
    assert jax.jit(apply)(params, x).shape == (2, *out_shape)
    assert jax.eval_shape(apply, params, x).shape == (2, *out_shape)
    assert layer.info.shape(shape) == out_shape


@pytest.mark.parametrize("layer,shape", LAYERS, ids=IDS)
def test_batched_unbatched_and_vmap_agree(layer, shape):
    params, _ = layer.init(KEY, shape)
    apply = _applier(layer, shape)
    x = normal(2, (3, *shape), jnp.float32)
    batched = apply(params, x)
    per_example = jnp.stack([apply(params, xi) for xi in x])
    mapped = jax.vmap(lambda xi: apply(params, xi))(x)
    assert_close(per_example, batched, "unbatched", rtol=1e-5, atol=1e-5)
    assert_close(mapped, batched, "vmap", rtol=1e-5, atol=1e-5)


def test_params_structure():
    p, _ = L.Conv2D(4, 3).init(KEY, (5, 5, 2))
    assert set(p) == {"w", "b"} and p["w"].shape == (3, 3, 2, 4) and p["b"].shape == (4,)
    p, _ = L.Conv2D(4, 3, groups=2, use_bias=False).init(KEY, (5, 5, 2))
    assert set(p) == {"w"} and p["w"].shape == (3, 3, 1, 4)
    p, _ = L.Dense(3).init(KEY, (7,))
    assert p["w"].shape == (7, 3) and np.all(p["b"] == 0)
    p, out = L.serial(L.Conv2D(2, 3), L.ReLU(), L.serial(L.Flatten(), L.Dense(1))).init(
        KEY, (4, 4, 1))
    assert isinstance(p, tuple) and len(p) == 3 and p[1] == {} and isinstance(p[2], tuple)
    assert out == (1,)
    init, apply = L.ReLU()  # unpacks like stax
    assert init(KEY, (3,)) == ({}, (3,))


def test_parallel_and_residual():
    layer = L.parallel(L.Conv2D(2, 1), L.MaxPool2D(2))
    params, shapes = layer.init(KEY, (4, 4, 3))
    assert shapes == ((4, 4, 2), (2, 2, 3))
    ys = layer.apply(params, normal(0, (4, 4, 3), jnp.float32))
    assert tuple(y.shape for y in ys) == shapes
    block = L.Conv2D(3, 3, padding=1)
    res = L.residual(block)
    (pb, ps), _ = res.init(KEY, (5, 5, 3))
    x = normal(1, (5, 5, 3), jnp.float32)
    assert ps == {}
    assert_close(res.apply((pb, ps), x), block.apply(pb, x) + x, "residual")


def test_dropout_keys_and_train_flag():
    net = L.serial(L.Dense(64), L.Dropout(0.5), L.Dropout(0.5))
    params, _ = net.init(KEY, (8,))
    x = normal(0, (8,), jnp.float32)
    evaluated = net.apply(params, x)
    assert_close(evaluated, L.Dense(64).apply(params[0], x), "eval is identity")
    with pytest.raises(ValueError, match=r"Dropout: apply\(\.\.\., train=True\) needs a PRNG"):
        net.apply(params, x, train=True)
    a = net.apply(params, x, key=jax.random.key(1), train=True)
    b = net.apply(params, x, key=jax.random.key(2), train=True)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, net.apply(params, x, key=jax.random.key(1), train=True))
    # serial splits the key: the two dropouts see different masks (survivors are x * 4)
    h = L.Dense(64).apply(params[0], x)
    survivors = np.asarray(a != 0)
    assert 0 < survivors.sum() < 64
    np.testing.assert_allclose(np.asarray(a)[survivors], 4 * np.asarray(h)[survivors], rtol=1e-6)


def test_vmap_init_over_keys_builds_an_ensemble():
    net = L.serial(L.Conv2D(3, 3), L.ReLU(), L.Flatten(), L.Dense(2))
    keys = jax.random.split(KEY, 4)
    params = jax.vmap(lambda k: net.init(k, (5, 5, 1))[0])(keys)
    assert params[0]["w"].shape == (4, 3, 3, 1, 3)
    x = normal(0, (6, 5, 5, 1), jnp.float32)
    ys = jax.vmap(lambda p: net.apply(p, x))(params)
    for i, k in enumerate(keys):
        assert_close(ys[i], net.apply(net.init(k, (5, 5, 1))[0], x), f"member {i}")
    assert not np.allclose(ys[0], ys[1])


@pytest.mark.parametrize(
    "make,shape,pattern",
    [
        (lambda: L.serial(L.Flatten(), L.Conv2D(3, 3)), (8, 8, 1),
         r"^serial\[1\] Conv2D: expects \(H, W, C\) input, got \(64,\)\.$"),
        (lambda: L.serial(L.ReLU(), L.serial(L.Dense(3), L.Dense(2))), (4, 4, 1),
         r"^serial\[1\]\.serial\[0\] Dense: expects \(features,\) input, got \(4, 4, 1\)\. "
         r"Put a Flatten\(\) before it\.$"),
        (lambda: L.serial(L.Conv2D(2, 9)), (8, 8, 1),
         r"serial\[0\] Conv2D: the kernel \(9 with dilation\) is larger than the padded input"),
        (lambda: L.serial(L.Conv2D(4, 3, groups=2)), (8, 8, 3),
         r"serial\[0\] Conv2D: `groups` \(=2\) must divide the input channels \(=3\)"),
        (lambda: L.residual(L.Conv2D(4, 3)), (8, 8, 4),
         r"residual: block output \(6, 6, 4\) and shortcut output \(8, 8, 4\) must match"),
        (lambda: L.parallel(L.Dense(2), L.Flatten(ndim=2)), (3, 3, 1),
         r"^parallel\[0\] Dense: expects"),
    ],
)
def test_init_errors_name_position_and_type(make, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        make().init(KEY, shape)


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: L.Conv2D(0, 3), r"Conv2D: `out_channels` must be an int >= 1, got 0"),
        (lambda: L.Conv2D(4, 3, stride=0), r"Conv2D: `stride` must be >= 1"),
        (lambda: L.Conv2D(5, 3, groups=2), r"Conv2D: `groups` \(=2\) must divide `out_channels`"),
        (lambda: L.Dropout(1.0), r"Dropout: `rate` \(the drop probability\) must be a float"),
        (lambda: L.Dense(0), r"Dense: `out_features` must be an int >= 1, got 0"),
        (lambda: L.serial(), r"serial: needs at least one layer"),
        (lambda: L.MaxPool2D(2, padding="FULL"),
         r"^MaxPool2D: `padding` string must be 'SAME' or 'VALID', got 'FULL'\.$"),
        (lambda: L.Conv2D(4, 3, padding=-1), r"^Conv2D: `padding` must be non-negative, got -1"),
        (lambda: L.Conv2D(4, 3, algorithm="fft"),
         r"^Conv2D: `algorithm` must be one of 'auto', 'xla', 'phase', 'im2col', 'taps', "
         r"(?:'onednn', )?"
         r"got 'fft'\.$"),
    ],
)
def test_construction_errors(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_apply_on_wrong_rank_is_a_clear_error():
    params, _ = L.Flatten().init(KEY, (2, 2, 1))
    with pytest.raises(ValueError, match=r"Flatten: expects inputs of rank 3 \(one example\) or 4"):
        L.Flatten().apply(params, jnp.ones((2, 2)))
