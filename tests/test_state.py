"""State in the layer contract: batch norm's running statistics against a hand computation of
the stated convention, state threaded through the combinators, evaluation read-only, stateless
layers unchanged, and the errors of a state that is missing or does not fit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fcnn
import models
from fcnn import layers as L
from fcnn import ops, privacy, train
from fcnn import reference as R
from fcnn.testing import assert_close, rule_bindings
from models.resnet import basic_block, conv_bn
from tests.strategies import normal


def _numpy_batch_norm(x, gamma, beta, eps):
    """Training-mode batch norm in float64 numpy: normalised by the biased batch statistics."""
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, mean, var


def test_running_statistics_after_a_few_steps_equal_a_hand_computation():
    momentum, eps = 0.8, 1e-3
    layer = L.BatchNorm(momentum=momentum, eps=eps)
    params, _ = layer.init(jax.random.key(0), (3, 3, 2))
    params = {"gamma": jnp.array([1.5, -0.5], jnp.float32),  # a float32 model: float32 state
              "beta": jnp.array([0.25, 2.0], jnp.float32)}
    state = layer.init_state((3, 3, 2))
    assert {k: v.tolist() for k, v in state.items()} == {"mean": [0, 0], "var": [1, 1]}
    mean, var = np.zeros(2), np.ones(2)  # the convention, by hand
    for step in range(3):
        x = np.asarray(normal(step, (4, 3, 3, 2))) * (step + 1) + step
        y, state = layer.apply(params, jnp.asarray(x, jnp.float32), state=state, train=True)
        want, b_mean, b_var = _numpy_batch_norm(x, np.asarray(params["gamma"]),
                                                np.asarray(params["beta"]), eps)
        m = x.size // 2  # 36 values per channel: the running variance is the unbiased one
        mean = momentum * mean + (1 - momentum) * b_mean
        var = momentum * var + (1 - momentum) * b_var * m / (m - 1)
        f32 = np.float32
        assert_close(y, want.astype(f32), f"step {step} output", rtol=1e-5, atol=1e-5)
        assert_close(state["mean"], mean.astype(f32), f"step {step} running mean", rtol=1e-5,
                     atol=1e-6)
        assert_close(state["var"], var.astype(f32), f"step {step} running variance", rtol=1e-5,
                     atol=1e-6)
    assert state["mean"].dtype == state["var"].dtype == jnp.float32
    # evaluation: the affine map with the running statistics; the state comes back unchanged
    x = np.asarray(normal(9, (2, 3, 3, 2)))
    y, after = layer.apply(params, jnp.asarray(x, jnp.float32), state=state)
    want = np.asarray(params["gamma"]) * (x - mean) / np.sqrt(var + eps) \
        + np.asarray(params["beta"])
    assert_close(y, want.astype(np.float32), "evaluation", rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(after[k], state[k]) for k in state)
    # one unbatched example in evaluation is the batch's first row
    one, _ = layer.apply(params, jnp.asarray(x[0], jnp.float32), state=state)
    assert_close(one, y[0], "unbatched", rtol=0, atol=0)


def test_pytorch_momentum_maps_to_one_minus_fcnns():
    """PyTorch's BatchNorm2d(momentum=0.1) is fcnn's BatchNorm(momentum=0.9) (values written
    from PyTorch's documented update: running = (1 - p) running + p batch, unbiased var)."""
    x = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2) ** 1.5
    layer = L.BatchNorm(momentum=0.9)
    params, _ = layer.init(jax.random.key(0), (2, 2, 2))
    _, state = layer.apply(params, x, state=layer.init_state((2, 2, 2)), train=True)
    p, flat = 0.1, x.reshape(-1, 2)
    assert_close(state["mean"], p * flat.mean(0), "mean", rtol=1e-6, atol=0)
    assert_close(state["var"], (1 - p) + p * flat.var(0, ddof=1), "var", rtol=1e-6, atol=0)


def test_no_gradient_flows_into_the_state():
    layer = L.BatchNorm()
    params, _ = layer.init(jax.random.key(0), (2, 2, 3))
    state = layer.init_state((2, 2, 3))
    x = normal(1, (4, 2, 2, 3))

    def running(x):
        _, s = layer.apply(params, x, state=state, train=True)
        return jnp.sum(s["mean"]) + jnp.sum(s["var"])

    assert float(jnp.max(jnp.abs(jax.grad(running)(x)))) == 0.0
    assert float(running(x)) != float(running(2 * x))  # the state does depend on x


def _tiny_resnet():
    """Stem, an option-A block that widens and subsamples, global pool, dense: every kind of
    state-carrying structure (serial, residual with a shortcut, a stateless shortcut)."""
    shortcut = L.serial(L.MaxPool2D(1, stride=2), L.PadChannels(6))
    return L.serial(conv_bn(3, 3, 1, 1), L.ReLU(), basic_block(6, 2, shortcut),
                    basic_block(6), L.GlobalAvgPool2D(), L.Dense(4))


def test_combinators_thread_the_childrens_states():
    net = _tiny_resnet()
    assert net.stateful and not models.lenet5().stateful
    state = net.init_state((8, 8, 1))
    # laid out like params: a tuple per stateful serial, (block, shortcut) per residual; a
    # stateless layer's or subtree's state is ()
    assert len(state) == 6 and state[1] == () and state[4] == () and state[5] == ()
    block = state[2][0]  # basic_block = serial(residual(body, shortcut), ReLU())
    assert block[1] == () and len(block[0]) == 3  # the shortcut (pool, pad) is stateless
    params, _ = net.init(jax.random.key(0), (8, 8, 1))
    x = normal(2, (5, 8, 8, 1))
    apply = jax.jit(net.apply, static_argnames="train")
    y, new = apply(params, x, state=state, train=True)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(state))]
    assert all(changed) and len(changed) == 2 * 5  # every batch norm's mean and var moved
    y_eval, same = apply(params, x, state=new)
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(new)))
    assert not np.allclose(y, y_eval)  # batch statistics vs running statistics
    # parallel: each branch its own state
    both = L.parallel(L.BatchNorm(), L.ReLU(), L.BatchNorm(momentum=0.5))
    s = both.init_state((2, 2, 1))
    p, _ = both.init(jax.random.key(0), (2, 2, 1))
    ys, s2 = both.apply(p, jnp.arange(8.0).reshape(2, 2, 2, 1), state=s, train=True)
    assert len(ys) == 3 and s2[1] == ()
    assert_close(jnp.stack([s2[0]["mean"][0], s2[2]["mean"][0]]),
                 np.float32([0.1 * 3.5, 0.5 * 3.5]), "momenta 0.9 and 0.5, batch mean 3.5",
                 rtol=1e-6, atol=0)


def test_stateless_layers_keep_their_contract():
    net = models.lenet5()
    params, _ = net.init(jax.random.key(0), (28, 28, 1))
    x = normal(0, (2, 28, 28, 1))
    assert net.init_state((28, 28, 1)) == ()
    y, state = net.apply_with_state(params, (), x)
    assert_close(y, net.apply(params, x), "apply_with_state", rtol=0, atol=0)
    assert state == ()
    with pytest.raises(TypeError, match="state"):
        net.apply(params, x, state=())


def test_a_batch_norm_resnet_in_training_mode_equals_its_oracle():
    """Values, new state, and gradients in params and input of the training loss, in float64,
    against the same net on fcnn.reference (plain lax under autodiff)."""
    net = _tiny_resnet()
    oracle = L.with_ops(net, R)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                    net.init(jax.random.key(0), (8, 8, 1))[0])
    state = net.init_state((8, 8, 1))
    x, y = normal(1, (3, 8, 8, 1)), jnp.array([0, 3, 1])

    def run(model, loss):
        def objective(p, x):
            logits, s = model.apply(p, x, state=state, train=True)
            return loss(logits, y), s
        return jax.jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(params, x)

    got = run(net, ops.softmax_cross_entropy)
    assert rule_bindings(lambda p: net.apply(p, x, state=state, train=True), params) > 0
    assert rule_bindings(lambda p: oracle.apply(p, x, state=state, train=True), params) == 0
    want = run(oracle, R.softmax_cross_entropy)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                    strict=True):
        assert_close(a, b, "batch-norm resnet", rtol=1e-9, atol=1e-11)


def test_group_norm_layer_is_per_example_and_ready_for_dp_sgd():
    layer = L.GroupNorm(2)
    assert not layer.stateful
    params, out = layer.init(jax.random.key(0), (3, 3, 4))
    assert out == (3, 3, 4) and set(params) == {"gamma", "beta"}
    x = normal(3, (5, 3, 3, 4))
    y = layer.apply(params, x)
    assert_close(y, ops.group_norm(x, params["gamma"], params["beta"], 2), "layer", rtol=0,
                 atol=0)
    one = jax.jit(layer.apply)
    for i in range(5):  # no statistic crosses examples
        assert_close(one(params, x[i]), y[i], f"example {i}", rtol=1e-6, atol=1e-6)
    net = L.serial(L.Conv2D(4, 3), L.GroupNorm(2), L.ReLU(), L.Flatten(), L.Dense(3))
    p, _ = net.init(jax.random.key(1), (5, 5, 1))
    xs, ys = normal(4, (4, 5, 5, 1)), jnp.array([0, 1, 2, 1])
    grads = jax.jit(lambda p: privacy.per_example_grads(net, p, xs, ys))(p)
    one = jax.jit(jax.grad(lambda p: ops.softmax_cross_entropy(net.apply(p, xs[2:3]),
                                                               ys[2:3])))(p)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(one)):
        assert_close(a[2], b, "example 2's gradient", rtol=1e-5, atol=1e-6)


def test_per_example_grads_refuse_batch_norm_in_training_mode():
    net = _tiny_resnet()
    params, _ = net.init(jax.random.key(0), (8, 8, 1))
    state = net.init_state((8, 8, 1))
    x, y = normal(1, (3, 8, 8, 1)), jnp.array([0, 3, 1])
    with pytest.raises(ValueError, match=r"per_example_grads: serial\[0\]\.serial\[1\] "
                                         r"BatchNorm couples the examples of a batch"):
        privacy.per_example_grads(net, params, x, y, key=jax.random.key(0), state=state)
    with pytest.raises(ValueError, match="per_example_grads: the model carries state"):
        privacy.per_example_grads(net, params, x, y)
    # evaluation mode (running statistics): each example on its own, well defined
    grads = jax.jit(lambda p: privacy.per_example_grads(net, p, x, y, state=state))(params)
    one = jax.jit(jax.grad(lambda p: ops.softmax_cross_entropy(
        net.apply(p, x[1:2], state=state)[0], y[1:2])))(params)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(one)):
        assert_close(a[1], b, "example 1's gradient", rtol=1e-5, atol=1e-6)


def test_global_average_pool_and_channel_padding():
    x = normal(5, (2, 4, 3, 3))
    pool, pad = L.GlobalAvgPool2D(), L.PadChannels(5)
    assert pool.init(jax.random.key(0), (4, 3, 3))[1] == (3,)
    assert_close(pool.apply({}, x), jnp.mean(x, axis=(1, 2)), "global mean", rtol=1e-6, atol=0)
    assert rule_bindings(lambda x: pool.apply({}, x), x) > 0  # fcnn's average pool
    padded = pad.apply({}, x)
    assert padded.shape == (2, 4, 3, 5) and np.array_equal(padded[..., :3], x)
    assert not np.any(padded[..., 3:])
    assert pad.init(jax.random.key(0), (4, 3, 3))[1] == (4, 3, 5)


def test_summary_shows_state_apart_from_parameters():
    s = fcnn.summary(models.resnet20(), (32, 32, 3))
    assert s.total_params == 269_722 and s.total_state == 2 * 688  # 19 batch norms, 688 channels
    text = str(s)
    assert text.splitlines()[0].split()[:4] == ["layer", "output", "shape", "params"]
    assert "state" in text.splitlines()[0] and "1,376" in text.splitlines()[-1]
    assert "state" not in str(fcnn.summary(models.lenet5(), (28, 28, 1))).splitlines()[0]


@pytest.mark.parametrize("make,call,message", [
    (lambda: L.BatchNorm(), lambda m, p, x: m.apply(p, x),
     r"BatchNorm: carries state .* call apply\(params, x, \.\.\., state=state\)"),
    (lambda: L.BatchNorm(), lambda m, p, x: m.apply(p, x, state={"mean": jnp.zeros(3)}),
     r"BatchNorm: `state` must be \{'mean': \(3,\), 'var': \(3,\)\} \(from init_state\), got "
     r"\{'mean': \(3,\)\}"),
    (lambda: L.BatchNorm(ndim=1), lambda m, p, x: m.apply(p, x[:1, 0, 0], state=m.init_state(
        (3,)), train=True), r"BatchNorm: train=True needs more than one value per channel"),
    (lambda: L.serial(L.BatchNorm(), L.ReLU()), lambda m, p, x: m.apply(p, x, state=(1,)),
     r"serial: `state` must be the tuple of its 2 children's states \(from init_state\), got "
     r"a tuple of 1"),
    (lambda: L.serial(L.BatchNorm(), L.ReLU()), lambda m, p, x: m.apply(p, x),
     r"serial: carries state"),
])
def test_state_errors_name_the_layer(make, call, message):
    layer = make()
    params, _ = layer.init(jax.random.key(0), (3,) if "ndim=1" in repr(layer) else (2, 2, 3))
    with pytest.raises(ValueError, match=message):
        call(layer, params, normal(0, (2, 2, 2, 3)))


def test_configuration_errors():
    with pytest.raises(ValueError, match=r"BatchNorm: `momentum` must be a float"):
        L.BatchNorm(momentum=1.0)
    with pytest.raises(ValueError, match=r"BatchNorm: `eps` must be a float > 0"):
        L.BatchNorm(eps=0)
    with pytest.raises(ValueError, match=r"serial\[1\] BatchNorm: expects inputs of rank 3"):
        L.serial(L.Flatten(), L.BatchNorm()).init_state((2, 2, 3))
    with pytest.raises(ValueError, match=r"GroupNorm: `groups` \(=4\) must divide the input "
                                         r"channels \(=6\)"):
        L.GroupNorm(4).init(jax.random.key(0), (2, 2, 6))
    with pytest.raises(ValueError, match=r"PadChannels: input has 6 channels, more than "
                                         r"`out_channels` \(=4\)"):
        L.PadChannels(4).init(jax.random.key(0), (2, 2, 6))
    with pytest.raises(ValueError, match="GlobalAvgPool2D: expects"):
        L.GlobalAvgPool2D().init(jax.random.key(0), (6,))


def test_a_users_own_stateful_layer_composes_and_trains():
    """A running count of the examples seen in training: user state through serial and the
    train step."""
    counter = L.stateful(
        lambda key, shape: ({}, shape),
        lambda params, x, *, key=None, train=False, state: (
            x, {"seen": state["seen"] + (x.shape[0] if train else 0)}),
        lambda shape: {"seen": jnp.zeros((), jnp.int32)})
    net = L.serial(counter, L.Flatten(), L.Dense(3))
    assert net.stateful and net.info.children[0].info.kind == "Layer"
    assert fcnn.summary(net, (2, 2, 1)).total_state == 1
    params, _ = net.init(jax.random.key(0), (2, 2, 1))
    state = net.init_state((2, 2, 1))
    step = train.make_step(net, optax.sgd(0.1))
    opt_state = optax.sgd(0.1).init(params)
    x, y = normal(0, (5, 2, 2, 1)), jnp.array([0, 1, 2, 0, 1])
    for _ in range(3):
        params, opt_state, _, state = step(params, opt_state, x, y, jax.random.key(0), state)
    assert int(state[0]["seen"]) == 15
    assert int(net.apply(params, x, state=state)[1][0]["seen"]) == 15  # evaluation: unchanged
    with pytest.raises(TypeError, match="stateful: `init_state` must be callable"):
        L.stateful(counter.init, counter.apply, None)
