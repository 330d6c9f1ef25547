"""A NaN never hides in training: the data door, the gradient norm metric, and `fit`'s guard on
the loss, the gradient norm and the new state (docs/training.md, "The divergence guard")."""

from __future__ import annotations

import gzip

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fcnn import data, train
from fcnn import layers as L
from fcnn.layers import Layer
from models import lenet5


def _small(float_images=False):
    """256 training and 100 test digits (4 steps per epoch at batch 64)."""
    full = data.load()
    ds = data.Dataset(full.train_images[:256], full.train_labels[:256],
                      full.test_images[:100], full.test_labels[:100])
    if float_images:
        ds = ds._replace(train_images=ds.train_images.astype(np.float32),
                         test_images=ds.test_images.astype(np.float32))
    return ds


def _poison(apply):
    """A parameterless user layer (a bare `Layer`) running `apply(x)`."""
    return Layer(lambda key, shape: ((), shape), lambda params, x, **kw: apply(x))


def test_a_nan_pixel_is_refused_at_the_door_naming_the_array_and_index():
    ds = _small(float_images=True)
    ds.train_images[5, 14, 14, 0] = np.nan
    with pytest.raises(data.DataError, match=r"fit: `train_images` must hold finite values, got "
                       r"nan at index \(5, 14, 14, 0\) \(1 non-finite of 200704\)"):
        train.fit(lenet5(), ds, train.Recipe(epochs=1))
    ds.train_images[5, 14, 14, 0] = 0
    ds.test_images[7, 0, 3, 0] = -np.inf
    with pytest.raises(ValueError, match=r"`test_images` .* got -inf at index \(7, 0, 3, 0\)"):
        train.fit(lenet5(), ds, train.Recipe(epochs=1))


def test_a_float_idx_file_holding_nan_is_refused(tmp_path):
    values = np.arange(6, dtype=">f4").reshape(2, 3)
    values[1, 2] = np.nan
    header = bytes([0, 0, 0x0D, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    path = tmp_path / "x.idx.gz"
    path.write_bytes(gzip.compress(header + values.tobytes()))
    with pytest.raises(data.DataError, match=r"read_idx\(.*x.idx.gz\): `data` must hold finite "
                       r"values, got nan at index \(1, 2\)"):
        data.read_idx(path)
    values[1, 2] = 5
    path.write_bytes(gzip.compress(header + values.tobytes()))
    np.testing.assert_array_equal(data.read_idx(path), values)


def test_a_nan_pixel_past_the_door_stops_the_first_step_naming_the_leaf(tmp_path):
    """The NaN pixel of the issue's run, put into every batch inside the model (the door keeps
    it out of a dataset): relu passes it on, the loss is NaN, and fit stops at step 0."""
    nan_pixel = _poison(lambda x: x.at[5, 14, 14, 0].set(jnp.nan))
    model = L.serial(nan_pixel, lenet5())
    with pytest.raises(train.Diverged, match=r"diverged at step 0 \(epoch 1\): loss nan; "
                       r"gradient norm nan; the update made 10 of 10 parameter leaves "
                       r"non-finite, the first params\[1\]\[0\]\['b'\]") as e:
        train.fit(model, _small(), train.Recipe(epochs=1), checkpoint_dir=tmp_path)
    assert (e.value.step, e.value.epoch, e.value.leaf) == (0, 1, "[1][0]['b']")
    assert all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(e.value.params))
    assert not (tmp_path / "checkpoint.npz").exists()


@jax.custom_vjp
def _nan_backward(x):
    return x


_nan_backward.defvjp(lambda x: (x, None), lambda _, g: (jnp.full_like(g, jnp.nan),))


def test_a_nan_gradient_with_a_finite_loss_stops_naming_the_first_bad_leaf():
    """NaN injected into the gradient after the first convolution: the loss stays finite, the
    gradient norm does not, and only the layers below the injection go bad."""
    model = L.serial(L.Conv2D(4, 3), _poison(_nan_backward), L.ReLU(), L.MaxPool2D(2),
                     L.Flatten(), L.Dense(10))
    with pytest.raises(train.Diverged, match=r"loss \d+\.\d+; gradient norm nan; the update "
                       r"made 2 of 4 parameter leaves non-finite, the first params\[0\]\['b'\]"
                       ) as e:
        train.fit(model, _small(), train.Recipe(epochs=1))
    assert np.isfinite(e.value.loss) and np.isnan(e.value.grad_norm)
    assert (e.value.step, e.value.bad_leaves, e.value.state_leaf) == (0, 2, None)


def test_a_non_finite_new_state_stops():
    """An example scaled to 1e30 overflows batch norm's float32 variance: the running variance
    goes to inf while the loss and the gradients stay finite."""
    model = L.serial(_poison(lambda x: x.at[0].multiply(1e30)), L.Conv2D(4, 3), L.BatchNorm(),
                     L.ReLU(), L.Flatten(), L.Dense(10))
    with pytest.raises(train.Diverged, match=r"the new state is non-finite at "
                       r"state\[2\]\['var'\]\. .*running statistics\) overflowed") as e:
        train.fit(model, _small(), train.Recipe(epochs=1))
    # the state alone: the normalised output and the gradients stay finite
    assert np.isfinite(e.value.loss) and np.isfinite(e.value.grad_norm)
    assert (e.value.step, e.value.leaf, e.value.state_leaf) == (0, None, "[2]['var']")


def test_the_step_reports_the_global_gradient_norm():
    model = L.serial(L.Conv2D(4, 3), L.ReLU(), L.Flatten(), L.Dense(10))
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    ds = _small()
    x, y = next(data.batches(ds.train_images, ds.train_labels, 32))
    step = train.make_step(model, optax.sgd(0.1), weight_decay=1e-3)
    metrics = step(params, optax.sgd(0.1).init(params), x, y, jax.random.key(1))[2]

    def objective(p):
        from fcnn import ops
        return ops.softmax_cross_entropy(model.apply(p, x, train=True), y) + 1e-3 * sum(
            0.5 * jnp.sum(p[i]["w"] ** 2) for i in (0, 3))

    grads = jax.grad(objective)(params)
    want = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                       for g in jax.tree_util.tree_leaves(grads)))
    assert set(metrics) == {"loss", "accuracy", "grad_norm"}
    np.testing.assert_allclose(float(metrics["grad_norm"]), want, rtol=1e-5)


def test_fit_passes_each_step_s_gradient_norm_to_on_step():
    seen = []
    model = L.serial(L.Conv2D(2, 3, stride=2), L.ReLU(), L.Flatten(), L.Dense(10))
    train.fit(model, _small(), train.Recipe(epochs=1), on_step=seen.append)
    assert len(seen) == 4 and all(np.isfinite(p.grad_norm) and p.grad_norm > 0 for p in seen)


def test_batch_norm_statistics_take_the_parameters_dtype():
    """float64 parameters keep float64 running statistics (they were cast to float32);
    bfloat16 copies of the parameters (mixed precision) leave float32 statistics float32."""
    layer = L.BatchNorm()
    params, _ = layer.init(jax.random.key(0), (3, 3, 2))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3, 3, 2)) * 1e-9 + 1.0)
    p64 = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    _, state = layer.apply(p64, x, train=True, state=layer.init_state((3, 3, 2)))
    assert all(v.dtype == jnp.float64 for v in state.values())
    want = 0.1 * np.asarray(x).reshape(-1, 2).mean(0)  # momentum 0.9 from zeros
    np.testing.assert_allclose(state["mean"], want, rtol=1e-15)  # float32 loses it at 6e-8
    s64 = state
    _, state = layer.apply(p64, x, train=True, state=s64)
    assert state["mean"].dtype == jnp.float64
    p16 = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
    _, state = layer.apply(p16, x.astype(jnp.bfloat16), train=True,
                           state=layer.init_state((3, 3, 2)))
    assert all(v.dtype == jnp.float32 for v in state.values())


def test_a_float64_batch_norm_model_trains_and_resumes_with_float64_statistics(tmp_path):
    model = L.serial(L.Conv2D(2, 3, stride=2), L.BatchNorm(), L.ReLU(), L.Flatten(),
                     L.Dense(10))
    params, _ = model.init(jax.random.key(0), (28, 28, 1))
    p64 = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    ds, recipe = _small(), train.Recipe(epochs=2)

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(model, ds, recipe, params=p64, checkpoint_dir=tmp_path, on_epoch=stop)
    resumed = train.fit(model, ds, recipe, params=p64, checkpoint_dir=tmp_path, resume=True)
    straight = train.fit(model, ds, recipe, params=p64)
    assert {str(a.dtype) for a in jax.tree_util.tree_leaves(resumed.state)} == {"float64"}
    assert resumed.params_sha256 == straight.params_sha256
