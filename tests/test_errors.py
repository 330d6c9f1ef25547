"""Bad input is refused by fcnn at trace time with a message naming op, argument, expected, got."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from fcnn import ops

x4 = jnp.zeros((2, 8, 8, 3))
w = jnp.zeros((3, 3, 3, 4))

CASES = [
    # (call, exception, regex)
    (lambda: ops.conv2d(jnp.zeros((2, 8, 8, 4)), w), ValueError,
     r"conv2d: x has 4 channels but w expects 3 \(w.shape\[2\] \* groups"),
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
    (lambda: ops.conv2d(x4, w, padding=1.5), TypeError, r"conv2d: `padding` must be an int"),
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
    (lambda: ops.conv2d(x4.astype(jnp.int32), w), TypeError,
     r"conv2d: `x` must be a floating-point array, got dtype int32"),
    (lambda: ops.conv2d(x4, w, stride=(1, 2, 3)), ValueError,
     r"conv2d: `stride` must be an int or a pair"),
    (lambda: ops.conv2d_grad_input(jnp.zeros((2, 5, 5, 4)), w, (2, 8, 8, 3)), ValueError,
     r"conv2d_grad_input: `g` must have the forward output's shape \(2, 6, 6, 4\)"),
    (lambda: ops.conv2d_grad_input(jnp.zeros((2, 6, 6, 4)), w, (8, 8, 3)), ValueError,
     r"conv2d_grad_input: `input_shape` must be a tuple of 4 ints"),
    (lambda: ops.conv2d_grad_kernel(x4, jnp.zeros((6, 6, 4)), w.shape), ValueError,
     r"conv2d_grad_kernel: `x` and `g` must both be batched or both unbatched"),
    (lambda: ops.max_pool2d(x4, 9), ValueError,
     r"max_pool2d: the window \(9 with dilation\) is larger than the padded input along H"),
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
     r"dropout: `rate` \(the drop probability\) must be in \[0, 1\), got 1.0"),
    (lambda: ops.dropout(jax.random.key(0), x4, -0.1), ValueError, r"dropout: `rate`"),
    (lambda: ops.dropout(jax.random.key(0), x4, jnp.array(0.5)), TypeError,
     r"dropout: `rate` must be a Python float"),
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
                                         r"\('xla', 'phase', 'im2col', 'taps'\), got 'fft'"):
        ops.conv2d(x4, w, algorithm="fft")
