"""Bad input is refused by fcnn at trace time with a message naming op, argument, expected, got."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fcnn import augment, init, ops, train
from fcnn import layers as L
from fcnn import reference as R

x4 = jnp.zeros((2, 8, 8, 3))
w = jnp.zeros((3, 3, 3, 4))

CASES = [
    # (call, exception, regex)
    (lambda: ops.conv2d(jnp.zeros((2, 8, 8, 4)), w), ValueError,
     r"conv2d: x has 4 channels but w expects 3 \(w.shape\[-2\] \* groups"),
    (lambda: ops.conv2d(jnp.zeros((8, 8)), w), ValueError,
     r"conv2d: `x` must have rank 3 \(H, W, C\) or 4 \(N, H, W, C\), got shape \(8, 8\)\. "
     r"Add a channel axis"),
    (lambda: ops.conv2d(x4, jnp.zeros((3, 3, 3))), ValueError, r"conv2d: `w` must have rank 4"),
    (lambda: ops.conv2d(x4, w, stride=0), ValueError, r"conv2d: `stride` must be >= 1.*got 0"),
    (lambda: ops.conv2d(x4, w, dilation=(1, 0)), ValueError, r"conv2d: `dilation` must be >= 1"),
    (lambda: ops.conv2d(x4, w, padding=-1), ValueError,
     r"conv2d: `padding` must be non-negative, got -1"),
    (lambda: ops.conv2d(x4, w, padding=((0, 1), (-2, 0))), ValueError,
     r"conv2d: `padding` must be non-negative"),
    (lambda: ops.conv2d(x4, w, padding="FULL"), ValueError,
     r"conv2d: `padding` string must be 'SAME' or 'VALID', got 'FULL'"),
    (lambda: ops.conv2d(x4, w, padding=1.5), TypeError,
     r"conv2d: `padding` must be an int, a pair \(ph, pw\), \(\(top, bottom\), \(left, right\)\), "
     r"'SAME' or 'VALID', got float 1.5"),
    (lambda: ops.conv2d(x4, w, padding=((1, 1), 2)), ValueError,
     r"conv2d: `padding` must be an int, a pair .*, got \(\(1, 1\), 2\)"),
    (lambda: ops.conv2d(x4, w, padding=np.array([1, 1, 1])), ValueError,
     r"conv2d: `padding` must be an int, a pair .*, got \(1, 1, 1\)"),
    (lambda: ops.conv2d(x4, w, stride=np.array([1.5, 1.0])), TypeError,
     r"conv2d: `stride` must be an int, got float 1.5"),
    (lambda: ops.conv2d(x4, jnp.zeros((9, 3, 3, 4))), ValueError,
     r"conv2d: the kernel \(9 with dilation\) is larger than the padded input along H \(8 \+ "
     r"padding 0 \+ 0 = 8\)"),
    (lambda: ops.conv2d(x4, w, dilation=4), ValueError, r"conv2d: the kernel \(9 with dilation\)"),
    (lambda: ops.conv2d(x4, jnp.zeros((3, 3, 1, 4)), groups=2), ValueError,
     r"conv2d: `groups` \(=2\) must divide both the input channels \(=3\)"),
    (lambda: ops.conv2d(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 2, 3)), groups=2), ValueError,
     r"output channels \(=3\)"),
    (lambda: ops.conv2d(x4, w, jnp.zeros(3)), ValueError,
     r"conv2d: `b` must have shape \(4,\) \(one per output feature\), got \(3,\)"),
    (lambda: ops.conv2d(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 2, 4)), groups=(2, 3)),
     TypeError, r"conv2d: `groups` must be an int >= 1, got tuple \(2, 3\)"),
    (lambda: ops.conv2d(x4, w, groups=0), ValueError,
     r"conv2d: `groups` must be an int >= 1, got 0"),
    (lambda: ops.conv2d(x4.astype(jnp.int32), w), TypeError,
     r"conv2d: `x` must be a floating-point array, got dtype int32"),
    (lambda: ops.conv2d(x4, w, stride=(1, 2, 3)), ValueError,
     r"conv2d: `stride` must be an int or a pair"),
    (lambda: ops.conv2d_grad_input(jnp.zeros((2, 5, 5, 4)), w, (2, 8, 8, 3)), ValueError,
     r"conv2d_grad_input: `g` must have the forward output's shape \(2, 6, 6, 4\)"),
    (lambda: ops.conv2d_grad_input(jnp.zeros((2, 6, 6, 4)), w, (8, 8, 3)), ValueError,
     r"conv2d_grad_input: `input_shape` must be a tuple of 4 ints"),
    (lambda: ops.conv2d_grad_input(jnp.zeros((2, 6, 6, 4)), w, ((2, 2), 8, 8, 3)), TypeError,
     r"conv2d_grad_input: `input_shape\[0\]` must be an int >= 0, got tuple \(2, 2\)"),
    (lambda: ops.conv2d_grad_input(jnp.zeros((2, 6, 6, 4)), w, (2, 8.0, 8, 3)), TypeError,
     r"conv2d_grad_input: `input_shape\[1\]` must be an int >= 1, got float 8.0"),
    (lambda: ops.conv2d_grad_input(jnp.zeros((6, 6, 4)), w, (8, 0, 3)), ValueError,
     r"conv2d_grad_input: `input_shape\[1\]` must be an int >= 1, got 0"),
    (lambda: ops.conv2d_grad_kernel(x4, jnp.zeros((6, 6, 4)), w.shape), ValueError,
     r"conv2d_grad_kernel: `x` and `g` must both be batched or both unbatched"),
    (lambda: ops.conv2d_grad_kernel(x4, jnp.zeros((2, 6, 6, 4)), ((3, 3), 3, 3, 4)), TypeError,
     r"conv2d_grad_kernel: `kernel_shape\[0\]` must be an int >= 1, got tuple \(3, 3\)"),
    (lambda: ops.max_pool2d(x4, 9), ValueError,
     r"max_pool2d: the window \(9\) is larger than the padded input along H"),
    (lambda: ops.avg_pool2d(x4, (2, 9)), ValueError,
     r"avg_pool2d: the window \(9\) is larger than the padded input along W"),
    (lambda: ops.max_pool2d(x4, np.array([2, 2, 2])), ValueError,
     r"max_pool2d: `window` must be an int or a pair \(h, w\), got \(2, 2, 2\)"),
    (lambda: ops.max_pool2d(x4, 2, padding=2), ValueError,
     r"max_pool2d: `padding` must be smaller than the window on each side"),
    (lambda: ops.avg_pool2d(x4, 2, stride=0), ValueError, r"avg_pool2d: `stride` must be >= 1"),
    (lambda: ops.avg_pool2d(x4, 2, padding="same?"), ValueError, r"avg_pool2d: `padding` string"),
    (lambda: ops.max_pool2d(jnp.zeros(8), 2), ValueError, r"max_pool2d: `x` must have rank 3"),
    (lambda: ops.dense(jnp.zeros((2, 5)), jnp.zeros((4, 3))), ValueError,
     r"dense: `x` has 5 features \(shape \(2, 5\)\) but `w` expects 4 \(w.shape\[0\]\)"),
    (lambda: ops.dense(jnp.zeros((2, 4)), jnp.zeros(4)), ValueError,
     r"dense: `w` must have rank 2"),
    (lambda: ops.dense(jnp.zeros((2, 4)), jnp.zeros((4, 3)), jnp.zeros((2,))), ValueError,
     r"dense: `b` must have shape \(3,\)"),
    (lambda: ops.dropout(jax.random.key(0), x4, 1.0), ValueError,
     r"dropout: `rate` \(the drop probability\) must be a float in \[0, 1\), got 1.0"),
    (lambda: ops.dropout(jax.random.key(0), x4, -0.1), ValueError, r"dropout: `rate`"),
    (lambda: ops.dropout(jax.random.key(0), x4, float("nan")), ValueError,
     r"dropout: `rate` \(the drop probability\) must be a finite float in \[0, 1\), got nan"),
    (lambda: ops.dropout(jax.random.key(0), x4, "0.5"), TypeError,
     r"dropout: `rate` \(the drop probability\) must be a float in \[0, 1\), got str '0.5'"),
    (lambda: ops.dropout(jax.random.key(0), x4, np.array([0.5])), TypeError,
     r"dropout: `rate` .* must be a float in \[0, 1\), got tuple \(0.5,\)"),
    (lambda: ops.leaky_relu(x4, float("nan")), ValueError,
     r"leaky_relu: `negative_slope` must be a finite float, got nan"),
    (lambda: ops.leaky_relu(x4, "0.1"), TypeError,
     r"leaky_relu: `negative_slope` must be a float, got str '0.1'"),
    (lambda: ops.elu(x4, float("inf")), ValueError,
     r"elu: `alpha` must be a finite float, got inf"),
    (lambda: ops.elu(x4, True), TypeError, r"elu: `alpha` must be a float, got bool True"),
    (lambda: ops.hinge(jnp.zeros((4, 10)), jnp.zeros(4, jnp.int32), float("nan")), ValueError,
     r"hinge: `margin` must be a finite float, got nan"),
    (lambda: ops.hinge(jnp.zeros((4, 10)), jnp.zeros(4, jnp.int32), "1"), TypeError,
     r"hinge: `margin` must be a float, got str '1'"),
    (lambda: ops.local_response_norm(x4, 3.0), TypeError,
     r"local_response_norm: `size` must be an int >= 1, got float 3.0"),
    (lambda: ops.local_response_norm(x4, k=0.0), ValueError,
     r"local_response_norm: `k` must be a float > 0, got 0.0"),
    (lambda: ops.local_response_norm(x4, alpha=-1e-4), ValueError,
     r"local_response_norm: `alpha` must be a float >= 0, got -0.0001"),
    (lambda: ops.local_response_norm(x4, beta=float("nan")), ValueError,
     r"local_response_norm: `beta` must be a finite float, got nan"),
    (lambda: ops.softmax_cross_entropy(jnp.zeros((4, 10)), jnp.zeros(3, jnp.int32)), ValueError,
     r"softmax_cross_entropy: integer `labels` must have shape \(4,\) \(the batch shape of "
     r"`logits` \(4, 10\)\), got \(3,\)"),
    (lambda: ops.softmax_cross_entropy(jnp.zeros((4, 10)), jnp.zeros((4, 9))), ValueError,
     r"softmax_cross_entropy: probability `labels` must have the shape of `logits`"),
    (lambda: ops.hinge(jnp.zeros((4, 10)), jnp.zeros(5, jnp.int32)), ValueError,
     r"hinge: `labels` must have shape \(4,\)"),
    (lambda: ops.hinge(jnp.zeros((4, 10)), jnp.zeros(4)), TypeError,
     r"hinge: `labels` must be integer"),
    (lambda: ops.mse(jnp.zeros((4, 1)), jnp.zeros(4)), ValueError,
     r"mse: `pred` and `target` must have the same shape, got \(4, 1\) and \(4,\)"),
    (lambda: ops.relu(jnp.arange(3)), TypeError, r"relu: `x` must be a floating-point array"),
]


@pytest.mark.parametrize("call,exc,pattern", CASES)
def test_bad_input_is_refused_with_a_clear_message(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize("call,exc,pattern", CASES)
def test_refused_at_trace_time_under_jit(call, exc, pattern):
    """Errors come from fcnn's own checks while tracing, before XLA sees anything."""
    with pytest.raises(exc, match=pattern):
        jax.jit(call)()


def test_unknown_conv_algorithm():
    with pytest.raises(ValueError, match=r"conv2d: `algorithm` must be 'auto' or one of "
                                         r"\('xla', 'phase', 'im2col', 'taps'(?:, 'onednn')?\), "
                                         r"got 'fft'"):
        ops.conv2d(x4, w, algorithm="fft")


def test_traced_configuration_is_refused_under_jit():
    """Configuration is static: a value traced under jit has no value to normalise."""
    with pytest.raises(TypeError, match=r"dropout: `rate` must be a float known at trace time, "
                                        r"got a traced array"):
        jax.jit(lambda r: ops.dropout(jax.random.key(0), x4, r))(0.5)
    with pytest.raises(TypeError, match=r"conv2d: `padding` must be an int, a pair .* known at "
                                        r"trace time, got a traced array"):
        jax.jit(lambda p: ops.conv2d(x4, w, padding=p))(np.array([1, 1]))


# ----------------------------------------------------------------------------- accepted forms

y_ref = ops.conv2d(x4 + 1, w + 1, stride=(1, 2), padding=((1, 0), (2, 1)))
stride_jax = jnp.array([1, 2])  # concrete, also when a jitted function closes over it


@pytest.mark.parametrize("call", [
    lambda: ops.conv2d(x4 + 1, w + 1, stride=np.array([1, 2]), padding=np.array([[1, 0], [2, 1]])),
    lambda: ops.conv2d(x4 + 1, w + 1, stride=(np.int64(1), 2), padding=[[1, 0], [2, 1]]),
    lambda: ops.conv2d(x4 + 1, w + 1, stride=stride_jax,
                       padding=(np.array([1, 0]), np.array([2, 1]))),
], ids=["numpy", "numpy-scalars-and-lists", "concrete-jax"])
def test_numpy_and_concrete_configuration_is_accepted(call):
    """Before: "conv2d: `stride` must be an int, got ndarray array([1, 2])"."""
    np.testing.assert_array_equal(call(), y_ref)
    np.testing.assert_array_equal(jax.jit(call)(), y_ref)


def test_numpy_forms_of_every_argument_kind():
    np.testing.assert_array_equal(ops.conv2d(x4, w, padding=np.array([1, 2])),
                                  ops.conv2d(x4, w, padding=(1, 2)))
    np.testing.assert_array_equal(ops.max_pool2d(x4 + 1, np.array([2, 3]), np.int32(2)),
                                  ops.max_pool2d(x4 + 1, (2, 3), 2))
    g = jnp.ones((2, 6, 6, 4))
    np.testing.assert_array_equal(ops.conv2d_grad_input(g, w, np.array([2, 8, 8, 3])),
                                  ops.conv2d_grad_input(g, w, (2, 8, 8, 3)))
    np.testing.assert_array_equal(ops.conv2d_grad_kernel(x4, g, [np.int64(3), 3, 3, 4]),
                                  ops.conv2d_grad_kernel(x4, g, w.shape))
    assert ops.conv2d_grad_input(jnp.zeros((0, 6, 6, 4)), w, (0, 8, 8, 3)).shape == (0, 8, 8, 3)
    np.testing.assert_array_equal(ops.leaky_relu(x4 - 1, np.float32(0.5)),
                                  ops.leaky_relu(x4 - 1, 0.5))
    assert ops.dropout(jax.random.key(0), x4 + 1, np.float32(0.0)) is not None
    np.testing.assert_array_equal(ops.local_response_norm(x4 + 1, np.int64(3)),
                                  ops.local_response_norm(x4 + 1, 3))


def test_layers_take_numpy_configuration():
    conv = L.Conv2D(np.int64(4), np.array([3, 3]), padding=np.array([1, 1]), groups=np.int64(1))
    assert conv.info.config["padding"] == ((1, 1), (1, 1)) == conv.info.window.padding
    params, out = conv.init(jax.random.key(0), (8, 8, 3))
    assert out == (8, 8, 4) == conv.apply(params, x4).shape[1:]
    pool = L.MaxPool2D(np.array([2, 2]), padding=np.array([[0, 1], [0, 1]]))
    assert pool.init(jax.random.key(0), np.array([8, 8, 3]))[1] == (4, 4, 3)
    assert L.Dropout(np.float32(0.5)).info.config["rate"] == 0.5


@pytest.mark.parametrize("make,exc,pattern", [
    (lambda: L.Dense(2.5), TypeError, r"Dense: `out_features` must be an int >= 1, got float 2.5"),
    (lambda: L.Conv2D(True, 3), TypeError, r"Conv2D: `out_channels` must be an int >= 1, got bool"),
    (lambda: L.Conv2D(4, 3, groups=(2, 2)), TypeError,
     r"Conv2D: `groups` must be an int >= 1, got tuple \(2, 2\)"),
    (lambda: L.LeakyReLU("0.1"), TypeError,
     r"LeakyReLU: `negative_slope` must be a float, got str '0.1'"),
    (lambda: L.LocalResponseNorm(k=-2.0), ValueError,
     r"LocalResponseNorm: `k` must be a float > 0, got -2.0"),
    (lambda: L.LocalResponseNorm(alpha="x"), TypeError,
     r"LocalResponseNorm: `alpha` must be a float"),
    (lambda: L.Dropout(float("nan")), ValueError,
     r"Dropout: `rate` \(the drop probability\) must be a finite float in \[0, 1\), got nan"),
    (lambda: L.Flatten(np.int64(0)), ValueError, r"Flatten: `ndim` must be an int >= 1, got 0"),
])
def test_layer_construction_refuses_bad_configuration(make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make()


@pytest.mark.parametrize("input_shape,pattern", [
    ((8, 8.5, 3), r"^Conv2D: `input_shape\[1\]` must be an int >= 1, got float 8.5"),
    ((8, 0, 3), r"^Conv2D: `input_shape\[1\]` must be an int >= 1, got 0"),
    ("883", r"^Conv2D: `input_shape` must be a tuple of ints, got '883'"),
])
def test_layer_input_shape_is_a_tuple_of_positive_ints(input_shape, pattern):
    """Before: `int(d)` took 8.5 as 8 and the string "883" as (8, 8, 3)."""
    with pytest.raises(L.LayerError, match=pattern):
        L.Conv2D(4, 3).init(jax.random.key(0), input_shape)


# ----------------------------------------------------------------------------- labels

z = jnp.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 0.0], [0.0, 0.0, 1.0, -2.0]])


@pytest.mark.parametrize("loss,against", [(ops.softmax_cross_entropy, "logits"),
                                          (ops.hinge, "scores")])
@pytest.mark.parametrize("labels,got", [
    (np.array([7, 0, 1]), r"labels\[0\] = 7"),
    ([0, -1, 1], r"labels\[1\] = -1"),
    (jnp.array([4, 0, 9]), r"labels\[0\] = 4, labels\[2\] = 9"),
])
def test_concrete_labels_out_of_range_are_refused(loss, against, labels, got):
    """Before: softmax_cross_entropy took label 7 or -1 of 4 classes as a row with no target
    (a finite, wrong loss); hinge gave NaN (7) or wrapped -1 to the last class."""
    pattern = (rf"{loss.__name__}: integer `labels` must be class indices in \[0, 4\) "
               rf"\(`{against}` has 4 classes\), got {got}\.")
    with pytest.raises(ValueError, match=pattern):
        loss(z, labels)
    with pytest.raises(ValueError, match=pattern):  # concrete while tracing: refused there too
        jax.jit(lambda z: loss(z, labels))(z)


def test_many_bad_labels_are_summarised():
    with pytest.raises(ValueError, match=r"got labels\[0, 0\] = 5, labels\[0, 1\] = 5, "
                                         r"labels\[1, 0\] = 5 \(and 1 more\)\.$"):
        ops.softmax_cross_entropy(jnp.zeros((2, 2, 4)), np.full((2, 2), 5))
    with pytest.raises(ValueError, match=r"got 4\.$"):
        ops.hinge(jnp.zeros(4), 4)


@pytest.mark.parametrize("loss", [ops.softmax_cross_entropy, ops.hinge])
@pytest.mark.parametrize("bad", [4, -1, 100])
def test_traced_labels_out_of_range_give_nan_loss_and_nan_gradient_rows(loss, bad):
    """Under jit the labels have no values while tracing: the bad example's term and its
    gradient row are NaN, the other rows' gradients are those of the valid examples."""
    labels = jnp.array([bad, 1, 3])
    value, grad = jax.jit(jax.value_and_grad(loss))(z, labels)
    assert np.isnan(value)
    assert np.isnan(grad[0]).all()
    want = jax.grad(getattr(R, loss.__name__))(z, jnp.array([0, 1, 3]))
    np.testing.assert_allclose(grad[1:], want[1:], rtol=1e-6)
    per_example = jax.vmap(lambda z, y: loss(z, y))(z, labels)  # traced by vmap: the same
    assert np.isnan(per_example[0]) and np.isfinite(per_example[1:]).all()


@pytest.mark.parametrize("loss", [ops.softmax_cross_entropy, ops.hinge])
def test_traced_valid_labels_are_unchanged(loss):
    labels = jnp.array([0, 1, 3])
    value, grad = jax.jit(jax.value_and_grad(loss))(z, labels)
    ref = getattr(R, loss.__name__)
    np.testing.assert_allclose(value, ref(z, labels), rtol=1e-6)
    np.testing.assert_allclose(grad, jax.grad(ref)(z, labels), rtol=1e-6)


def test_soft_labels_are_not_range_checked():
    t = jnp.array([[0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(ops.softmax_cross_entropy(z, t), R.softmax_cross_entropy(z, t),
                               rtol=1e-6)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: train.make_step(L.serial(L.Dense(2)), optax.sgd(0.1), weight_decay=-1e-4),
     ValueError, r"make_step: `weight_decay` must be a float >= 0, got -0.0001"),
    (lambda: train.make_step(L.serial(L.Dense(2)), optax.sgd(0.1), max_shift=1.5),
     TypeError, r"make_step: `max_shift` must be an int >= 0, got float 1.5"),
    (lambda: augment.random_shift(jax.random.key(0), x4, -1),
     ValueError, r"random_shift: `max_shift` must be an int >= 0, got -1"),
    (lambda: init.normal(float("nan")), ValueError, r"init.normal: `std` must be a finite float"),
    (lambda: init.constant("1"), TypeError, r"init.constant: `value` must be a float"),
])
def test_training_configuration_is_refused_at_the_boundary(call, exc, pattern):
    """Outside the ops too: a negative shift once reached jnp.pad, a NaN std every weight."""
    with pytest.raises(exc, match=pattern):
        call()
