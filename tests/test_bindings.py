"""The two bindings of fcnn's rules agree: every op's value, VJP, second-order VJP and
per-example VJP are the same under "primitive" (the default: primitives and custom_jvp) and
"custom_vjp" — so the custom_vjp binding's hand-written backward rules run in every suite run,
whatever FCNN_BINDING says."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from fcnn import ops
from fcnn import reference as R
from fcnn.ops import _binding
from fcnn.ops.convolution.algorithms import ALGORITHMS
from fcnn.testing import assert_close
from tests.strategies import distinct, dtype_for, normal
from tests.test_transforms import POOL_RULES, lax_rules_refused

x4, w4, b4 = distinct(0, (2, 6, 6, 3)) / 10, normal(1, (3, 3, 3, 4)), normal(2, (4,))
z, wz, bz = normal(3, (4, 5)), normal(4, (5, 3)), normal(5, (3,))
x5, w5 = distinct(12, (2, 3, 6, 6, 1)) / 10, normal(13, (2, 3, 3, 1, 4))
labels = jnp.array([0, 2, 1, 4])
OPS = {  # name -> (function of differentiable arrays, those arrays)
    "conv2d": (lambda x, w, b: ops.conv2d(x, w, b, stride=2, padding=1), (x4, w4, b4)),
    "conv2d_grad_input": (lambda g, w: ops.conv2d_grad_input(g, w, x4.shape, padding=1),
                          (normal(6, (2, 6, 6, 4)), w4)),
    "conv2d_grad_kernel": (lambda x, g: ops.conv2d_grad_kernel(x, g, w4.shape, padding=1),
                           (x4, normal(6, (2, 6, 6, 4)))),
    "conv1d": (lambda x, w, b: ops.conv1d(x, w, b, stride=2, padding=1, activation="relu"),
               (x4[:, 0], w4[0], b4)),
    "conv1d_grad_input": (lambda g, w: ops.conv1d_grad_input(g, w, x4[:, 0].shape, padding=1),
                          (normal(6, (2, 6, 4)), w4[0])),
    "conv1d_grad_kernel": (lambda x, g: ops.conv1d_grad_kernel(x, g, w4[0].shape, padding=1),
                           (x4[:, 0], normal(6, (2, 6, 4)))),
    "conv3d": (lambda x, w: ops.conv3d(x, w, stride=(1, 2, 1), padding=1),
               (x5, w5)),
    "conv3d_grad_input": (lambda g, w: ops.conv3d_grad_input(g, w, (2, 3, 6, 6, 1), padding=1),
                          (normal(6, (2, 4, 6, 6, 4)), w5)),
    "conv3d_grad_kernel": (lambda x, g: ops.conv3d_grad_kernel(x, g, (2, 3, 3, 1, 4),
                                                               padding=1),
                           (x5, normal(6, (2, 4, 6, 6, 4)))),
    "conv_transpose1d": (lambda x, w, b: ops.conv_transpose1d(x, w, b, stride=2,
                                                              output_padding=1),
                         (x4[:, 0], w4[0, :, :3, :3], b4[:3])),
    "conv_transpose2d": (lambda x, w: ops.conv_transpose2d(x, w, stride=2, padding=1),
                         (x4, w4[..., :3])),
    "conv_transpose3d": (lambda x, w: ops.conv_transpose3d(x, w, stride=(2, 1, 1)),
                         (x5, w5[..., :1, :1])),
    "max_pool2d": (lambda x: ops.max_pool2d(x, 3, 2, 1), (x4,)),
    "avg_pool2d": (lambda x: ops.avg_pool2d(x, 3, 2, 1), (x4,)),
    "max_pool1d": (lambda x: ops.max_pool1d(x, 3, 2, 1), (x4[:, 0],)),
    "avg_pool1d": (lambda x: ops.avg_pool1d(x, 2), (x4[:, 0],)),
    "max_pool3d": (lambda x: ops.max_pool3d(x, 2, 1, ((1, 0), (0, 0), (0, 1))), (x5,)),
    "avg_pool3d": (lambda x: ops.avg_pool3d(x, (1, 3, 3), 2, ((0, 0), (1, 1), (1, 1))), (x5,)),
    "pad": (lambda x: ops.pad(x, ((1, 2), 1), "circular"), (x4,)),
    "adaptive_avg_pool": (lambda x: ops.adaptive_avg_pool(x, (4, 2)), (x4,)),
    "upsample": (lambda x: ops.upsample(x, 1.5, method="linear"), (x4,)),
    "pixel_shuffle": (lambda x: ops.pixel_shuffle(x, 2), (normal(11, (2, 3, 3, 12)),)),
    "pixel_unshuffle": (lambda x: ops.pixel_unshuffle(x[:, :4, :4], 2), (x4,)),
    "dense": (ops.dense, (z, wz, bz)),
    "dropout": (lambda x: ops.dropout(jax.random.key(0), x, 0.5), (x4,)),
    "relu": (ops.relu, (z,)),
    "leaky_relu": (lambda x: ops.leaky_relu(x, 0.1), (z,)),
    "elu": (ops.elu, (z,)),
    "sigmoid": (ops.sigmoid, (z,)),
    "tanh": (ops.tanh, (z,)),
    "softmax_cross_entropy": (lambda z: ops.softmax_cross_entropy(z, labels), (z,)),
    "mse": (ops.mse, (z, 0.5 * z + 1)),
    "hinge": (lambda z: ops.hinge(z, labels), (z,)),
    "local_response_norm": (lambda x: ops.local_response_norm(x, 3, 0.3, 0.6, 1.5), (x4,)),
    # the statistics folded into the one output, so their cotangents are compared too
    "batch_norm": (lambda x, g, b: (lambda y, m, v: y + (m + 2 * v).reshape(1, 1, 1, 3))(
        *ops.batch_norm(x, g, b)), (x4, normal(8, (3,)) + 1, normal(9, (3,)))),
    "batch_norm_inference": (lambda x, g, b, m, v: ops.batch_norm_inference(x, g, b, m, v),
                             (x4, normal(8, (3,)), normal(9, (3,)), normal(10, (3,)),
                              normal(11, (3,)) ** 2 + 0.5)),
    "group_norm": (lambda x, g, b: ops.group_norm(x, g, b, 3), (x4, normal(8, (3,)),
                                                                normal(9, (3,)))),
}


def test_every_op_is_compared():
    assert set(OPS) == set(ops.__all__)


# ops whose output keeps the examples of their first argument on axis 0
PER_EXAMPLE = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
               "avg_pool3d", "avg_pool2d", "pad", "pixel_shuffle",
               "adaptive_avg_pool", "upsample",
               "pixel_unshuffle", "dropout", "local_response_norm",
               "batch_norm_inference", "group_norm"}


def _derivatives(f, args, per_example):
    """Value, VJP with a fixed random cotangent, the gradient of that VJP's squared norm in the
    first argument (second order), and per-example VJPs (vmap over the first axis)."""
    y, vjp = jax.vjp(f, *args)
    ct = normal(7, jnp.shape(y))

    def first(*a):
        return jax.vjp(f, *a)[1](ct)

    second = jax.grad(lambda a0: sum(jnp.sum(v ** 2) for v in first(a0, *args[1:])))(args[0])
    out = dict(value=y, vjp=vjp(ct), second=second)
    if per_example:  # one VJP per example, with its own row of the cotangent
        def one(a0, c):
            return jax.vjp(lambda a: f(a, *args[1:]), a0[None])[1](c[None])[0]

        out["per_example"] = jax.vmap(one)(args[0], ct)
    return out


THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
# The 1-D/3-D and transposed ops run the same maps and rules as conv2d and the 2-D pools
# (written once for any rank): every run compares these three of them, the thorough profile
# all (the suite's time).
OTHER_RANKS = {"conv1d_grad_input", "conv1d_grad_kernel", "conv3d_grad_input",
               "conv3d_grad_kernel", "conv_transpose1d", "conv_transpose3d", "max_pool1d",
               "avg_pool1d", "max_pool3d", "avg_pool3d"}


@pytest.mark.parametrize("name", sorted(n for n in OPS if THOROUGH or n not in OTHER_RANKS))
def test_bindings_agree(name):
    f, args = OPS[name]
    results = {}
    for binding in _binding.BINDINGS:
        with ops.using_binding(binding):
            results[binding] = _derivatives(lambda *a: f(*a), args,  # traced afresh
                                            name in PER_EXAMPLE)
    for key, want in results["custom_vjp"].items():
        got = results["primitive"][key]
        for i, (a, b) in enumerate(zip(jax.tree_util.tree_leaves(got),
                                       jax.tree_util.tree_leaves(want), strict=True)):
            assert_close(a, b, f"{name} {key} [{i}]")


def test_the_primitive_binding_is_there_unless_asked_off():
    if os.environ.get("FCNN_BINDING") != "custom_vjp":
        assert _binding.PRIMITIVES_AVAILABLE, _binding._WHY
        assert ops.binding() == "primitive"


def test_switching_binding_retraces_jitted_functions():
    f = jax.jit(lambda x: ops.tanh(x))
    x = normal(0, (3,))
    before = ops.binding()
    with ops.using_binding("primitive"):
        jax.jvp(f, (x,), (x,))  # traced with the custom_jvp binding
        with ops.using_binding("custom_vjp"), pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(f, (x,), (x,))  # the same jitted function, traced again
    assert ops.binding() == before


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("binding", _binding.BINDINGS)
def test_second_order_runs_only_fcnn_s_rules_under_either_binding(binding, pool, algorithm):
    """Reverse over reverse of conv -> pool -> dense with lax's JVP and transpose rules for its
    convolution, dot and window reductions refused: under the custom_vjp binding too, where JAX
    differentiates each rule's fwd (each computes its output through the op itself, so that
    runs fcnn's rule again; through the algorithm it ran lax's convolution JVP, and failed on
    oneDNN's kernels)."""
    dtype = dtype_for(algorithm)
    x, w, wd = x4.astype(dtype), w4.astype(dtype), (normal(7, (36, 3)) / 10).astype(dtype)

    def second(conv, pool_op, dense):
        def f(x, w, wd):
            y = pool_op(jnp.sin(conv(x, w)), 3, 2, 1)
            return jnp.sum(jnp.tanh(dense(y.reshape(2, -1), wd)) ** 2)

        def outer(x, w, wd):
            return sum(jnp.sum(g ** 2) for g in jax.grad(f, argnums=(0, 1, 2))(x, w, wd))

        return jax.jit(jax.grad(outer, argnums=(0, 1, 2)))(x, w, wd)

    want = second(lambda x, w: R.conv2d(x, w, padding=1), getattr(R, pool), R.dense)
    refused = [lax.conv_general_dilated_p, lax.dot_general_p, *POOL_RULES]
    with ops.using_binding(binding), lax_rules_refused(refused):
        got = second(lambda x, w: ops.conv2d(x, w, padding=1, algorithm=algorithm),
                     getattr(ops, pool), ops.dense)
    # float32 (oneDNN's) second order: a few float32 roundings of sums that cancel
    rtol = None if dtype == jnp.float64 else 1e-4
    for name, g, r in zip(("x", "w", "wd"), got, want, strict=True):
        assert_close(g, r, f"{binding} {pool} {algorithm}: d2/d{name}", rtol=rtol)
