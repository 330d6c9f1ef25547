"""models/: published parameter counts, summaries, whole-model gradients, a falling loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import fcnn
import models
from fcnn import ops
from fcnn import reference as R
from fcnn.testing import rule_bindings
from tests.strategies import normal

PARAMS = {
    "lenet5": 61_706,
    "alexnet": 62_378_344,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "cs231n_convnet": 1_116_970,
    "resnet": 271_594,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_from_shapes(name):
    s = fcnn.summary(getattr(models, name)(), models.INPUT_SHAPES[name])
    assert s.total_params == PARAMS[name]
    out = jax.eval_shape(
        lambda p: getattr(models, name)().apply(p, jnp.zeros((1, *models.INPUT_SHAPES[name]))),
        jax.eval_shape(lambda k: getattr(models, name)().init(k, models.INPUT_SHAPES[name])[0],
                       jax.random.key(0)),
    )
    assert out.shape == (1, 1000 if name.startswith(("vgg", "alex")) else 10)


def test_vgg16_table_matches_the_cs231n_notes():
    """The VGGNet table of cs231n.github.io/convolutional-networks ("Case studies")."""
    s = fcnn.summary(models.vgg16(), (224, 224, 3))
    assert s.total_activations == 15_237_608
    convs = [r for r in s.rows if "Conv2D" in r.name]
    assert [r.params for r in convs[:2]] == [1_792, 36_928]  # 3*3*3*64+64, 3*3*64*64+64
    assert convs[-1].output_shape == (14, 14, 512)
    assert [r.params for r in s.rows if "Dense" in r.name] == [102_764_544, 16_781_312, 4_097_000]
    assert not any(r.note for r in s.rows)


def test_alexnet_layout_from_the_cs231n_notes():
    s = fcnn.summary(models.alexnet(), (227, 227, 3))
    conv1 = next(r for r in s.rows if "Conv2D" in r.name)
    assert conv1.output_shape == (55, 55, 96) and conv1.params == 34_944  # "35K"
    pools = [r.output_shape for r in s.rows if "MaxPool2D" in r.name]
    assert pools == [(27, 27, 96), (13, 13, 256), (6, 6, 256)]


def test_cs231n_pattern():
    net = models.cs231n_convnet(n=3, m=1, k=2, channels=(8,), hidden=16)
    names = [r.name.split()[-1] for r in fcnn.summary(net, (32, 32, 3)).rows[1:]]
    assert names == ["Conv2D", "ReLU"] * 3 + ["MaxPool2D", "Flatten"] + ["Dense", "ReLU"] * 2 \
        + ["Dense"]


@pytest.mark.parametrize("name,shape,kwargs", [
    ("lenet5", (28, 28, 1), {}),
    ("cs231n_convnet", (32, 32, 3), dict(channels=(4, 8), hidden=16)),
    ("resnet", (32, 32, 3), dict(blocks_per_stage=1, widths=(4, 8, 8))),
])
def test_whole_model_gradients_match_autodiff(name, shape, kwargs):
    """The model against itself on fcnn.reference (plain lax under autodiff): the oracle."""
    net = getattr(models, name)(**kwargs)
    oracle = fcnn.layers.with_ops(net, R)
    params, _ = net.init(jax.random.key(0), shape)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    x = normal(1, (2, *shape))
    y = jnp.array([1, 3])

    def loss(params, x):
        return ops.softmax_cross_entropy(net.apply(params, x), y)

    ours = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    assert rule_bindings(oracle.apply, params, x) == 0
    ref = jax.jit(jax.value_and_grad(lambda p, x: R.softmax_cross_entropy(oracle.apply(p, x), y),
                                     argnums=(0, 1)))(params, x)
    assert rule_bindings(net.apply, params, x) > 0  # net is unchanged
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref),
                    strict=True):
        fcnn.testing.assert_close(a, b, f"{name} loss/gradient")


def test_lenet_loss_falls_with_sgd():
    net = models.lenet5()
    params, _ = net.init(jax.random.key(0), (28, 28, 1))
    x = normal(0, (32, 28, 28, 1), jnp.float32)
    y = jnp.arange(32) % 10

    @jax.jit
    def step(params):
        loss, g = jax.value_and_grad(
            lambda p: ops.softmax_cross_entropy(net.apply(p, x), y))(params)
        return jax.tree_util.tree_map(lambda p, d: p - 0.05 * d, params, g), loss

    losses = []
    for _ in range(8):
        params, loss = step(params)
        losses.append(float(loss))
    # last / first loss over init key and input seed s = 0-9: 0.32-0.51 (0.42 at s = 0, as
    # here), within 2e-7 with other CPU kernels (YNNPACK off: XLA_FLAGS=
    # --xla_cpu_experimental_ynn_fusion_type=); 0.7 sits 0.19 above the largest.
    assert losses[-1] < 0.7 * losses[0], losses
