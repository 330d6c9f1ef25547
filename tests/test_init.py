"""Initialisers: fans for dense and HWIO (+groups) weights, the variance of large draws; a
model's compiled init, bit for bit the op-by-op one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from fcnn import init, layers
from fcnn.layers import _base as base


def test_fans():
    assert init.fans((300, 100)) == (300.0, 100.0)
    assert init.fans((3, 3, 16, 32)) == (144.0, 288.0)
    # depthwise-ish: groups=4, kernel (3, 3, 4, 16): each output sums 3*3*4 inputs,
    # each input feeds 3*3*16/4 outputs
    assert init.fans((3, 3, 4, 16), groups=4) == (36.0, 36.0)
    assert init.fans((7,)) == (7.0, 7.0)


@pytest.mark.parametrize(
    "make,shape,groups,var",
    [
        (init.he_normal, (3, 3, 64, 128), 1, 2 / (9 * 64)),
        (init.he_normal, (784, 256), 1, 2 / 784),
        (init.glorot_uniform, (5, 5, 16, 64), 1, 2 / (25 * 16 + 25 * 64)),
        (init.glorot_normal, (400, 120), 1, 2 / (400 + 120)),
        (init.glorot_normal, (3, 3, 8, 32), 4, 2 / (9 * 8 + 9 * 32 / 4)),
    ],
)
def test_variance_of_large_draws(make, shape, groups, var):
    w = make()(jax.random.key(1), shape, jnp.float32, groups=groups)
    assert w.shape == shape and w.dtype == jnp.float32
    n = w.size
    # sample variance of n draws has relative std sqrt(2/(n-1)) (normal) or less (uniform)
    assert abs(float(jnp.var(w)) / var - 1) < 5 * np.sqrt(2 / (n - 1))
    assert abs(float(jnp.mean(w))) < 5 * np.sqrt(var / n)


def test_uniform_bound_normal_std_constant_zeros():
    w = init.glorot_uniform()(jax.random.key(0), (100, 50))
    assert float(jnp.max(jnp.abs(w))) <= np.sqrt(6 / 150)
    w = init.normal(0.05)(jax.random.key(0), (200, 200))
    assert abs(float(jnp.std(w)) - 0.05) < 0.001
    np.testing.assert_array_equal(init.constant(0.1)(None, (3,)), jnp.full(3, 0.1, jnp.float32))
    np.testing.assert_array_equal(init.zeros()(None, (2, 2)), jnp.zeros((2, 2)))


# ------------------------------------------------------------------ a model's compiled init

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def _eager(model, key, shape):
    """The init run op by op, as fcnn ran it before its init was one compiled program."""
    base.COMPILED_INIT = False
    try:
        return model.init(key, shape)
    finally:
        base.COMPILED_INIT = True


def _same_bits(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(np.asarray(x), np.asarray(y)), x.shape


# every model under the thorough profile (GoogLeNet's branches: 20 s); each run, a plain
# stack, batch norm with residual blocks, and a transposed-conv generator
COMPILED = sorted(models.INPUT_SHAPES) if THOROUGH else ["lenet5", "resnet20", "dcgan_generator"]


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_init_is_the_eager_init_bit_for_bit(name):
    """The compiled init (`fcnn.init.together`: the key tree split level by level, the draws
    batched by size, LLVM at O1) gives the very bits of the op-by-op init: the params sha256
    figures quoted before it stay true. Also under x64 (float64 draws come later, in the
    layers' dtype: float32 here too) and under vmap over keys."""
    model, shape = getattr(models, name)(), models.INPUT_SHAPES[name]
    key = jax.random.key(7)
    params, out = model.init(key, shape)
    want, want_out = _eager(model, key, shape)
    assert out == want_out
    _same_bits(params, want)
    if name == "lenet5":
        keys = jax.random.split(key, 3)
        batched = jax.vmap(lambda k: model.init(k, shape)[0])(keys)
        for i in range(3):
            _same_bits(jax.tree_util.tree_map(lambda a, i=i: a[i], batched),
                       _eager(model, keys[i], shape)[0])
        # a legacy uint32 key and inside a user's jit (the nested program) likewise
        raw = jax.random.PRNGKey(3)
        _same_bits(model.init(raw, shape)[0], _eager(model, raw, shape)[0])
        _same_bits(jax.jit(lambda k: model.init(k, shape)[0])(raw), _eager(model, raw, shape)[0])


def test_compiled_init_at_xlas_default_level_is_the_eager_init():
    """The suite compiles everything at LLVM's O0 (conftest: XLA_FLAGS), where the compiled
    init runs at O0 too; a user's process runs at XLA's default, where the init compiles at
    O1 and the op-by-op draws at O3. Bit for bit the same there too, in a fresh process:
    eager, under vmap, and inside a user's jit (the program without compiler options)."""
    script = (
        "import jax, numpy as np, models\n"
        "import fcnn.layers._base as base\n"
        "for name in ('lenet5',):\n"
        "    m, s = getattr(models, name)(), models.INPUT_SHAPES[name]\n"
        "    a = m.init(jax.random.key(5), s)[0]\n"
        "    base.COMPILED_INIT = False\n"
        "    b = m.init(jax.random.key(5), s)[0]\n"
        "    base.COMPILED_INIT = True\n"
        "    keys = jax.random.split(jax.random.key(5), 2)\n"
        "    c = jax.vmap(lambda k: m.init(k, s)[0])(keys)\n"
        "    c = jax.tree_util.tree_map(lambda v: v[0], c)\n"
        "    d = jax.jit(lambda k: m.init(k, s)[0])(keys[0])\n"
        "    e = m.init(keys[0], s)[0]\n"
        "    base.COMPILED_INIT = False\n"
        "    f = m.init(keys[0], s)[0]\n"
        "    base.COMPILED_INIT = True\n"
        "    same = lambda p, q: all(np.array_equal(x, y) for x, y in zip(\n"
        "        jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q)))\n"
        "    assert same(a, b) and same(c, f) and same(d, f) and same(e, f)\n"
        "print('same')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]


def test_compiled_init_with_a_users_initialiser_layer_or_key():
    """What may not run batched runs op by op, as written, the same bits as before: a layer
    with a user's initialiser (here JAX's, which scales its draw where XLA would fold the scale:
    compiled, 32,345 of 60,000 weights differed in the last bit), a tree holding a user's bare
    Layer (whose init may do anything: never traced), and a key of another implementation
    (rbg, whose bits the batching does not reproduce)."""
    calls = []

    def bare_init(key, input_shape):
        calls.append(type(key))
        return {"s": jnp.asarray(np.float32(2.0))}, input_shape

    bare = layers.Layer(bare_init, lambda p, x, **kw: x * p["s"])
    cases = [
        (layers.serial(layers.Conv2D(4, 3), layers.Conv2D(4, 1), layers.ReLU(),
                       layers.Flatten(),
                       layers.Dense(300, w_init=jax.nn.initializers.normal(0.05))),
         jax.random.key(1)),
        (layers.serial(layers.Conv2D(4, 3), layers.Conv2D(4, 1), bare, layers.Flatten(),
                       layers.Dense(3)),
         jax.random.key(1)),
        (models.lenet5(), jax.random.key(1, impl="unsafe_rbg")),
    ]
    for model, key in cases:
        shape = (28, 28, 1) if len(model.info.children) > 5 else (6, 6, 2)
        _same_bits(model.init(key, shape)[0], _eager(model, key, shape)[0])
    assert calls and not any(issubclass(t, jax.core.Tracer) for t in calls)
    # the same trees with fcnn's initialisers and layers would compile (three weighted layers);
    # one or two weighted layers init op by op (the per-shape programs the process keeps)
    assert base._compilable(layers.serial(layers.Conv2D(4, 3), layers.Conv2D(4, 1),
                                          layers.Flatten(), layers.Dense(3)).init)
    assert not base._compilable(layers.serial(layers.Conv2D(4, 3), layers.Flatten(),
                                              layers.Dense(3)).init)
    assert not base._compilable(cases[0][0].init) and not base._compilable(cases[1][0].init)


def test_compiled_init_errors_are_the_layers():
    """A shape error raised while the program is traced is the layer's own LayerError."""
    model = models.lenet5()
    with pytest.raises(ValueError, match=r"serial\[0\] Conv2D: expects \(H, W, C\)"):
        model.init(jax.random.key(0), (28, 28))
