"""NaN, +inf and -inf through every public op: values, VJPs, JVPs and second order against the
plain-lax oracle under autodiff (exactly: NaN where it has NaN, the same infinity where it has
one), and values and VJPs against PyTorch where it is installed (docs/correctness.md, "NaN and
infinities").

Each case places one special value at one element of one argument (or of the cotangent) of an
op on small float64 arrays. Every program is compiled once per op and mode and run for all the
placements (the special value is data, not shape), which keeps the sweep to seconds per op.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcnn import ops
from fcnn import reference as R
from fcnn.ops.convolution.algorithms import ALGORITHMS
from fcnn.testing import assert_close, tolerance
from tests.strategies import dtype_for, normal

SPECIAL = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
_KEY = jax.random.key(3)
_LABELS = jnp.array([2, 0, 3])


def _conv_kw():
    return dict(stride=(2, 1), padding=((1, 0), (2, 1)))


# name -> (fcnn op, oracle, differentiable float64 arguments, fixed keyword arguments).
# Integer labels, keys, shapes and configuration are bound in the lambdas.
CASES = {
    "conv2d": (ops.conv2d, R.conv2d,
               (normal(0, (2, 6, 5, 3)), normal(1, (3, 2, 3, 4)), normal(2, (4,))), _conv_kw()),
    # the fused op: conv + bias + ReLU, and a grouped conv + ReLU without a bias
    "conv2d_relu": (ops.conv2d, R.conv2d,
                    (normal(0, (2, 6, 5, 3)), normal(1, (3, 2, 3, 4)), normal(2, (4,))),
                    dict(_conv_kw(), activation="relu")),
    "conv2d_relu_grouped": (ops.conv2d, R.conv2d,
                            (normal(0, (1, 5, 5, 4)), normal(1, (2, 2, 2, 4))),
                            dict(padding=1, dilation=(1, 2), groups=2, activation="relu")),
    "conv2d_grouped": (ops.conv2d, R.conv2d,
                       (normal(0, (1, 5, 5, 4)), normal(1, (2, 2, 2, 4))),
                       dict(padding=1, dilation=(1, 2), groups=2)),
    "conv2d_grad_input": (
        lambda g, w: ops.conv2d_grad_input(g, w, (2, 6, 5, 3), **_conv_kw()),
        lambda g, w: R.conv2d_grad_input(g, w, (2, 6, 5, 3), **_conv_kw()),
        (normal(3, (2, 3, 7, 4)), normal(1, (3, 2, 3, 4))), {}),
    "conv2d_grad_kernel": (
        lambda x, g: ops.conv2d_grad_kernel(x, g, (3, 2, 3, 4), **_conv_kw()),
        lambda x, g: R.conv2d_grad_kernel(x, g, (3, 2, 3, 4), **_conv_kw()),
        (normal(0, (2, 6, 5, 3)), normal(3, (2, 3, 7, 4))), {}),
    "conv1d": (ops.conv1d, R.conv1d,
               (normal(0, (2, 7, 3)), normal(1, (3, 3, 4)), normal(2, (4,))),
               dict(stride=2, padding=((2, 1),), activation="relu")),
    "conv1d_grad_input": (
        lambda g, w: ops.conv1d_grad_input(g, w, (2, 7, 3), stride=2, padding=1),
        lambda g, w: R.conv1d_grad_input(g, w, (2, 7, 3), stride=2, padding=1),
        (normal(3, (2, 4, 4)), normal(1, (3, 3, 4))), {}),
    "conv1d_grad_kernel": (
        lambda x, g: ops.conv1d_grad_kernel(x, g, (3, 3, 4), stride=2, padding=1),
        lambda x, g: R.conv1d_grad_kernel(x, g, (3, 3, 4), stride=2, padding=1),
        (normal(0, (2, 7, 3)), normal(3, (2, 4, 4))), {}),
    "conv3d": (ops.conv3d, R.conv3d,
               (normal(0, (1, 4, 3, 4, 2)), normal(1, (2, 2, 2, 1, 4)), normal(2, (4,))),
               dict(stride=(1, 2, 1), padding=1, groups=2)),
    "conv3d_grad_input": (
        lambda g, w: ops.conv3d_grad_input(g, w, (1, 4, 3, 4, 2), stride=2),
        lambda g, w: R.conv3d_grad_input(g, w, (1, 4, 3, 4, 2), stride=2),
        (normal(3, (1, 2, 1, 2, 3)), normal(1, (2, 2, 2, 2, 3))), {}),
    "conv3d_grad_kernel": (
        lambda x, g: ops.conv3d_grad_kernel(x, g, (2, 2, 2, 2, 3), stride=2),
        lambda x, g: R.conv3d_grad_kernel(x, g, (2, 2, 2, 2, 3), stride=2),
        (normal(0, (1, 4, 3, 4, 2)), normal(3, (1, 2, 1, 2, 3))), {}),
    "conv_transpose1d": (ops.conv_transpose1d, R.conv_transpose1d,
                         (normal(0, (2, 4, 3)), normal(1, (3, 2, 3)), normal(2, (2,))),
                         dict(stride=2, padding=1, output_padding=1)),
    "conv_transpose2d": (ops.conv_transpose2d, R.conv_transpose2d,
                         (normal(0, (2, 3, 2, 4)), normal(1, (3, 2, 1, 4))),
                         dict(stride=(2, 1), padding=((1, 0), (0, 1)), output_padding=(1, 0),
                              groups=2)),
    "conv_transpose3d": (ops.conv_transpose3d, R.conv_transpose3d,
                         (normal(0, (1, 2, 3, 2, 2)), normal(1, (2, 2, 2, 3, 2)),
                          normal(2, (3,))), dict(stride=2, padding=(1, 0, 1))),
    "max_pool2d": (ops.max_pool2d, R.max_pool2d, (normal(4, (2, 5, 6, 3)),),
                   dict(window=(3, 2), stride=(2, 1), padding=((1, 1), (0, 1)))),
    "max_pool2d_tiled": (ops.max_pool2d, R.max_pool2d, (normal(4, (2, 6, 4, 3)),),
                         dict(window=2)),
    "max_pool2d_tiled_16": (ops.max_pool2d, R.max_pool2d, (normal(4, (1, 4, 4, 16)),),
                            dict(window=2)),
    "max_pool2d_tiled_wide": (ops.max_pool2d, R.max_pool2d, (normal(4, (1, 4, 4, 32)),),
                              dict(window=2)),
    "pad": (ops.pad, R.pad, (normal(4, (2, 5, 6, 3)),),
            dict(padding=((1, 2), (3, 1)), mode="reflect")),
    "pad_replicate": (ops.pad, R.pad, (normal(4, (2, 5, 3)),),
                      dict(padding=((2, 3),), mode="replicate")),
    "pad_circular": (ops.pad, R.pad, (normal(4, (1, 3, 4, 2, 2)),),
                     dict(padding=1, mode="circular")),
    "pixel_shuffle": (ops.pixel_shuffle, R.pixel_shuffle, (normal(4, (2, 3, 2, 8)),),
                      dict(factor=2)),
    "pixel_unshuffle": (ops.pixel_unshuffle, R.pixel_unshuffle, (normal(4, (2, 4, 6, 2)),),
                        dict(factor=2)),
    "adaptive_avg_pool": (ops.adaptive_avg_pool, R.adaptive_avg_pool,
                          (normal(4, (2, 5, 7, 3)),), dict(output_size=(3, 2))),
    "adaptive_avg_pool_tiled": (ops.adaptive_avg_pool, R.adaptive_avg_pool,
                                (normal(4, (2, 6, 3)),), dict(output_size=2)),
    "upsample": (ops.upsample, R.upsample, (normal(4, (2, 3, 4, 2)),),
                 dict(scale=2, method="linear", align_corners=False)),
    "upsample_nearest": (ops.upsample, R.upsample, (normal(4, (2, 3, 2)),),
                         dict(scale=1.5, method="nearest")),
    "max_pool1d": (ops.max_pool1d, R.max_pool1d, (normal(4, (2, 7, 3)),),
                   dict(window=3, stride=2, padding=1)),
    "max_pool3d": (ops.max_pool3d, R.max_pool3d, (normal(4, (1, 3, 4, 3, 2)),),
                   dict(window=2, stride=(1, 2, 1), padding=((1, 0), (0, 0), (0, 1)))),
    "avg_pool1d": (ops.avg_pool1d, R.avg_pool1d, (normal(4, (2, 7, 3)),),
                   dict(window=2)),
    "avg_pool3d": (ops.avg_pool3d, R.avg_pool3d, (normal(4, (1, 3, 4, 3, 2)),),
                   dict(window=(3, 2, 2), stride=1, padding=1)),
    "avg_pool2d": (ops.avg_pool2d, R.avg_pool2d, (normal(4, (2, 5, 6, 3)),),
                   dict(window=(3, 2), stride=(2, 1), padding=((1, 1), (0, 1)))),
    "dense": (ops.dense, R.dense, (normal(5, (3, 7)), normal(6, (7, 4)), normal(7, (4,))), {}),
    "relu": (ops.relu, R.relu, (normal(8, (3, 4)),), {}),
    "leaky_relu": (ops.leaky_relu, R.leaky_relu, (normal(8, (3, 4)),),
                   dict(negative_slope=0.1)),
    "elu": (ops.elu, R.elu, (normal(8, (3, 4)),), dict(alpha=0.5)),
    "sigmoid": (ops.sigmoid, R.sigmoid, (normal(8, (3, 4)),), {}),
    "tanh": (ops.tanh, R.tanh, (normal(8, (3, 4)),), {}),
    "dropout": (lambda x: ops.dropout(_KEY, x, 0.5), lambda x: R.dropout(_KEY, x, 0.5),
                (normal(8, (4, 6)),), {}),
    "softmax_cross_entropy": (lambda z: ops.softmax_cross_entropy(z, _LABELS),
                              lambda z: R.softmax_cross_entropy(z, _LABELS),
                              (normal(9, (3, 5)),), {}),
    "softmax_cross_entropy_soft": (ops.softmax_cross_entropy, R.softmax_cross_entropy,
                                   (normal(9, (3, 5)),
                                    jax.nn.softmax(normal(10, (3, 5)))), {}),
    "mse": (ops.mse, R.mse, (normal(9, (3, 5)), normal(10, (3, 5))), {}),
    "hinge": (lambda s: ops.hinge(s, _LABELS), lambda s: R.hinge(s, _LABELS),
              (normal(9, (3, 5)),), {}),
    "local_response_norm": (ops.local_response_norm, R.local_response_norm,
                            (normal(11, (2, 3, 3, 6)),), dict(size=3, alpha=0.3)),
    "batch_norm": (ops.batch_norm, R.batch_norm,
                   (normal(12, (3, 2, 2, 4)), 1 + normal(13, (4,)), normal(14, (4,))), {}),
    "batch_norm_relu": (functools.partial(ops.batch_norm, activation="relu"),
                        functools.partial(R.batch_norm, activation="relu"),
                        (normal(12, (3, 2, 2, 4)), 1 + normal(13, (4,)), normal(14, (4,))), {}),
    "batch_norm_inference": (
        ops.batch_norm_inference, R.batch_norm_inference,
        (normal(12, (3, 2, 2, 4)), 1 + normal(13, (4,)), normal(14, (4,)), normal(15, (4,)),
         1 + jnp.abs(normal(16, (4,)))), {}),
    "group_norm": (lambda x, g, b: ops.group_norm(x, g, b, 2),
                   lambda x, g, b: R.group_norm(x, g, b, 2),
                   (normal(12, (3, 2, 2, 4)), 1 + normal(13, (4,)), normal(14, (4,))), {}),
}

# Every public op has a case (a new op must join the sweep).
COVERED = {name.removesuffix(suffix) for name in CASES
           for suffix in ("_grouped", "_tiled_wide", "_tiled_16", "_tiled", "_soft",
                          "_replicate", "_circular", "_nearest", "")
           if name.removesuffix(suffix) in ops.__all__}


def test_every_public_op_is_swept():
    assert COVERED == set(ops.__all__), set(ops.__all__) - COVERED


def _placements(args):
    """`(where, special, args')`: each special value at one interior element of each argument."""
    for i, a in enumerate(args):
        for label, v in SPECIAL.items():
            flat = np.asarray(a).copy().reshape(-1)
            flat[flat.size // 2] = v
            yield f"argument {i} = {label}", jnp.asarray(flat.reshape(a.shape)), i


def _bound(name, mod_fn):
    fn, kw = mod_fn, CASES[name][3]
    return functools.partial(fn, **kw) if kw else fn


def _programs(f, args):
    """jitted value, VJP, JVP (primitive binding) and reverse-over-reverse maps of `f`."""
    out = jax.eval_shape(f, *args)
    seeds = iter(range(100, 200))
    u = jax.tree_util.tree_map(lambda s: normal(next(seeds), s.shape, s.dtype), out)
    tangents = tuple(normal(200 + i, a.shape, a.dtype) for i, a in enumerate(args))

    def vjp(args, u):
        return jax.vjp(f, *args)[1](u)

    def second(args, u):
        inner = lambda *a: sum(jnp.vdot(d, t) for d, t in zip(vjp(a, u), tangents))
        return jax.grad(inner, argnums=tuple(range(len(args))))(*args)

    programs = dict(value=jax.jit(lambda args, u: f(*args)), vjp=jax.jit(vjp),
                    jvp=jax.jit(lambda args, u: jax.jvp(f, args, tangents)),
                    second=jax.jit(second))
    if ops.binding() == "custom_vjp":  # reverse mode only
        del programs["jvp"]
    return programs, u


def assert_same_nonfinite(got, want, what, special, rtol=None, atol=None):
    """A NaN in: NaN exactly where the oracle has NaN, the same infinities, finite values close.
    An infinity in: non-finite exactly where the oracle is non-finite, NaN and an infinity
    interchangeable (inf - inf and 0 * inf make NaN in one formula where another combines the
    same infinities into an infinity: lax's tanh derivative (g + g y)(1 - y) against fcnn's
    g (1 - y^2)); opposite infinities are not, and finite values are close."""
    if special == "nan":
        return assert_close(got, want, what, rtol, atol)
    got, want = np.asarray(got), np.asarray(want)
    finite = np.isfinite(want)
    differs = finite != np.isfinite(got)
    differs |= np.isinf(got) & np.isinf(want) & (got != want)
    if differs.any():
        at = tuple(int(i) for i in np.argwhere(differs)[0])
        raise AssertionError(f"{what}: non-finite elements differ from the oracle's, first at "
                             f"{at}: got {got[at]}, reference {want[at]} ({int(differs.sum())} "
                             f"of {differs.size})")
    assert_close(np.where(finite, got, 0), np.where(finite, want, 0), what, rtol, atol)


def _cases(args, u):
    """`(where, special, args, cotangent)`: each special value in each argument, then in each
    leaf of the cotangent of a non-scalar output (a loss's cotangent is the backward pass's
    seed: `test_a_non_finite_seed_makes_every_gradient_non_finite`)."""
    for where, a, i in _placements(args):
        yield where, where.split("= ")[1], args[:i] + (a,) + args[i + 1:], u
    u_leaves, u_tree = jax.tree_util.tree_flatten(u)
    for j, leaf in enumerate(u_leaves):
        if leaf.ndim == 0:
            continue
        for where, a, _ in _placements((leaf,)):
            leaves = u_leaves[:j] + [a] + u_leaves[j + 1:]
            yield (f"cotangent {j}{where.removeprefix('argument 0')}", where.split("= ")[1],
                   args, jax.tree_util.tree_unflatten(u_tree, leaves))


def _f64(*trees):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), trees)


def _compare(name, got_p, oracles, args, u):
    """Every case and mode of `got_p` against the oracles' programs: equal to one of them.
    Returns the `(where, mode)` pairs compared."""
    compared = set()
    for where, special, a, uu in _cases(args, u):
        for mode in got_p:
            if mode in ("value", "jvp") and "cotangent" in where:
                continue
            got = jax.tree_util.tree_leaves(got_p[mode](a, uu))
            errors = []
            for oracle in oracles:
                want = jax.tree_util.tree_leaves(oracle[mode](*_f64(a, uu)))
                try:
                    for k, (g, r) in enumerate(zip(got, want, strict=True)):
                        # float32 against the float64 oracle: within float32's bounds
                        assert_same_nonfinite(np.asarray(g, r.dtype), r, f"{name}, {where}: "
                                              f"{mode}, output leaf {k}", special,
                                              *tolerance(g.dtype))
                    break
                except AssertionError as e:
                    errors.append(str(e))
            else:
                raise AssertionError("; or ".join(errors))
            compared.add((where, mode))
    return compared


def _assert_swept(compared, args, u, modes):
    """Every special value in every argument was compared in every mode, and, for an output
    that is not a scalar (a loss's cotangent is the seed), in the cotangent in every reverse
    mode."""
    for i in range(len(args)):
        for label in SPECIAL:
            assert {m for w, m in compared if w == f"argument {i} = {label}"} == set(modes)
    reverse = {m for w, m in compared if w.startswith("cotangent")}
    scalar = all(leaf.ndim == 0 for leaf in jax.tree_util.tree_leaves(u))
    assert reverse == (set() if scalar else set(modes) - {"value", "jvp"}), reverse


@pytest.mark.parametrize("name", sorted(n for n in CASES if not n.startswith("conv")))
def test_special_values_match_the_oracle(name):
    fcnn_fn, ref_fn, args, _ = CASES[name]
    got_p, u = _programs(_bound(name, fcnn_fn), args)
    compared = _compare(name, got_p, [_programs(_bound(name, ref_fn), args)[0]], args, u)
    _assert_swept(compared, args, u, got_p)


# The convolution's padding: XLA's float64 convolution (the oracle's), the phase algorithm and
# oneDNN leave the padded cells out of the sum; im2col and taps multiply them as zeros (as
# PyTorch does). The two differ only where a NaN or infinite *weight* meets padding in the
# forward (or a non-finite upstream gradient does, in dK): a term 0 * NaN that is NaN in the
# second, absent in the first. Each algorithm's result, map by map, must equal the oracle's
# with padding left out (lax's convolution in float64) or with it multiplied (lax's convolution
# of the input padded first); which convention each algorithm follows is stated in
# docs/correctness.md.
def _explicit(conv_kw, rank):
    """The oracle's maps on the input padded first (VALID convolution of explicit zeros), and
    the transposed convolution as the VJP of that forward (on its output's shape)."""
    pads = conv_kw.get("padding", 0)
    rest = {k: v for k, v in conv_kw.items() if k not in ("padding", "output_padding")}

    def padded(x):  # the cases' padding is explicit or an int
        # the barrier keeps XLA from folding the pad into the convolution's own padding
        return jax.lax.optimization_barrier(jnp.pad(x, ((0, 0), *R._pads(pads, rank), (0, 0))))

    def conv(x, w, b=None):
        return R._conv(rank, padded(x), w, b, **rest)

    def grad_input(g, w, shape):
        return jax.vjp(lambda x: conv(x, w), jnp.zeros(shape, g.dtype))[1](g)[0]

    def grad_kernel(x, g, shape):
        return jax.vjp(lambda w: conv(x, w), jnp.zeros(shape, x.dtype))[1](g)[0]

    def transpose(shape):
        def run(x, w, b=None):
            y = grad_input(x, w, (x.shape[0], *shape[1:-1], w.shape[-2] * rest.get("groups", 1)))
            return y if b is None else y + b.reshape((1,) * (rank + 1) + (-1,))
        return run

    return conv, grad_input, grad_kernel, transpose


_X_SHAPE, _W_SHAPE = (2, 6, 5, 3), (3, 2, 3, 4)
# the dX and dK cases' forward input and kernel shapes and configuration, per rank
_GRADS = {1: ((2, 7, 3), (3, 3, 4), dict(stride=2, padding=1)),
          2: (_X_SHAPE, _W_SHAPE, _conv_kw()),
          3: ((1, 4, 3, 4, 2), (2, 2, 2, 2, 3), dict(stride=2))}


def _conv_maps(name, algorithm):
    """`(fcnn's map under algorithm, lax's oracle, the oracle on the input padded first)`."""
    rank = int(name.split("d")[0][-1])
    transposed = name.startswith("conv_transpose")
    grads = name.endswith(("_grad_input", "_grad_kernel"))
    x_shape, w_shape, kw = _GRADS[rank] if grads else (None, None, CASES[name][3])
    conv, grad_input, grad_kernel, transpose = _explicit(kw, rank)
    if name.endswith("_grad_input"):
        return (lambda g, w: getattr(ops, name)(g, w, x_shape, **kw, algorithm=algorithm),
                lambda g, w: getattr(R, name)(g, w, x_shape, **kw),
                lambda g, w: grad_input(g, w, x_shape))
    if name.endswith("_grad_kernel"):
        return (lambda x, g: getattr(ops, name)(x, g, w_shape, **kw, algorithm=algorithm),
                lambda x, g: getattr(R, name)(x, g, w_shape, **kw),
                lambda x, g: grad_kernel(x, g, w_shape))
    op = name.split("_relu")[0].removesuffix("_grouped")
    f, oracle = getattr(ops, op), getattr(R, op)
    if transposed:
        out = jax.eval_shape(lambda *a: oracle(*a, **kw), *CASES[name][2]).shape
        return functools.partial(f, **kw, algorithm=algorithm), functools.partial(
            oracle, **kw), transpose(out)
    return functools.partial(f, **kw, algorithm=algorithm), functools.partial(oracle, **kw), conv


CONV_CASES = sorted(n for n in CASES if n.startswith("conv"))
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def _conv_runs():
    """(name, algorithm) pairs: the 2-D cases under every algorithm; the 1-D, 3-D and
    transposed ones (the same maps, written once for any rank) each under one algorithm in
    turn, every one under the thorough profile (the suite's time)."""
    pairs = []
    for i, name in enumerate(CONV_CASES):
        if THOROUGH or name.startswith("conv2d"):
            pairs += [(name, a) for a in ALGORITHMS]
        else:
            pairs.append((name, ALGORITHMS[i % len(ALGORITHMS)]))
    return pairs


@pytest.mark.parametrize("name,algorithm", _conv_runs())
def test_conv_special_values_match_the_oracle(name, algorithm):
    """Under every algorithm (oneDNN's in float32, its only dtype), every rank, and the
    transposed convolution."""
    args = tuple(a.astype(dtype_for(algorithm)) for a in CASES[name][2])
    f, lax_oracle, padded_oracle = _conv_maps(name, algorithm)
    got_p, u = _programs(f, args)
    args64 = _f64(*args)  # the oracles in float64: float32's XLA convolution multiplies padding
    oracles = [_programs(lax_oracle, args64)[0], _programs(padded_oracle, args64)[0]]
    compared = _compare(f"{name} ({algorithm})", got_p, oracles, args, u)
    _assert_swept(compared, args, u, got_p)


@pytest.mark.parametrize("name", ["batch_norm", "batch_norm_relu"])
def test_batch_norm_native_special_values_match_the_oracle(name):
    """In float32, where the native kernels run (statistics in double, chunks merged), against
    the float64 oracle."""
    fcnn_fn, ref_fn, args, _ = CASES[name]
    args = tuple(a.astype(jnp.float32) for a in args)
    got_p, u = _programs(_bound(name, fcnn_fn), args)
    args64 = _f64(*args)
    compared = _compare(f"{name} (float32)", got_p, [_programs(_bound(name, ref_fn), args64)[0]],
                        args, u)
    _assert_swept(compared, args, u, got_p)


def test_hidden_nan_regressions():
    """The cases that once hid a NaN: relu(nan) was 0, leaky_relu's slope at NaN its negative
    slope, dropout turned a dropped NaN into 0."""
    x = jnp.array([np.nan, np.inf, -np.inf, 0.0, -2.0, 3.0])
    np.testing.assert_array_equal(ops.relu(x), [np.nan, np.inf, 0, 0, 0, 3])
    np.testing.assert_array_equal(jax.vmap(jax.grad(ops.relu))(x), [1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(jax.vmap(jax.grad(ops.leaky_relu))(x),
                                  np.array([1, 1, 0.01, 0.01, 0.01, 1]))
    kept = ops.dropout(jax.random.key(0), jnp.ones(64), 0.5)
    assert (kept == 0).any() and (kept != 0).any()
    y = ops.dropout(jax.random.key(0), jnp.full(64, np.nan), 0.5)
    assert np.isnan(y).all()
    g = jax.grad(lambda x: jnp.sum(ops.dropout(jax.random.key(0), x, 0.5) * np.nan))(jnp.ones(64))
    assert np.isnan(g).all()
    # a masked class (-inf logit) is a finite loss; a +inf logit makes its row NaN
    z = jnp.array([[0.0, -np.inf, 1.0]])
    assert np.isfinite(ops.softmax_cross_entropy(z, jnp.array([0])))
    assert np.isnan(ops.softmax_cross_entropy(z.at[0, 1].set(np.inf), jnp.array([0])))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_nan_stays_in_its_group(algorithm):
    """XLA:CPU's float64 grouped convolution sent a NaN of one group's input to every group's
    outputs (jaxlib 0.10; its float32 one does not): fcnn's maps, the forward, dX and the
    transposed convolution, keep it in its group in both dtypes."""
    for dtype in {jnp.float32, dtype_for(algorithm)}:
        x = jnp.ones((1, 4, 4, 4), dtype).at[0, 1, 1, 0].set(jnp.nan)  # group 0 of 2
        w = jnp.ones((3, 3, 2, 4), dtype)
        y = ops.conv2d(x, w, padding=1, groups=2, algorithm=algorithm)
        assert np.isnan(y[..., :2]).any() and not np.isnan(y[..., 2:]).any(), dtype
        dx = ops.conv2d_grad_input(y.at[..., 2:].set(1.0), w, x.shape, padding=1, groups=2,
                                   algorithm=algorithm)
        assert np.isnan(dx[..., :2]).any() and not np.isnan(dx[..., 2:]).any(), dtype
        t = ops.conv_transpose2d(x, w, stride=2, groups=2, algorithm=algorithm)
        assert np.isnan(t[..., :2]).any() and not np.isnan(t[..., 2:]).any(), dtype


@pytest.mark.parametrize("channels,window,stride", [(3, 2, 2), (16, 2, 2), (32, 2, 2),
                                                     (3, 3, 1)])
def test_a_max_pool_window_sends_its_gradient_to_its_first_nan(channels, window, stride):
    """Every backward path (narrow tiles, 16 and 32+ channels, overlapping windows): the first
    NaN of a window holding two is its maximum, whatever the numbers around it, +inf included."""
    x = np.random.default_rng(0).standard_normal((1, 3, 3, channels))[:, :window, :window]
    x[0, 0, 1, :] = np.nan
    x[0, 0, 0, :] = np.inf
    x[0, 1, 1, :] = np.nan
    x = jnp.asarray(x)
    y, vjp = jax.vjp(lambda x: ops.max_pool2d(x, window, stride), x)
    assert np.isnan(y).all()
    dx = np.asarray(vjp(jnp.ones_like(y))[0])
    want = np.zeros(x.shape)
    want[0, 0, 1, :] = 1
    np.testing.assert_array_equal(dx, want)
    np.testing.assert_array_equal(jax.vjp(lambda x: R.max_pool2d(x, window, stride), x)[1](
        jnp.ones_like(y))[0], want)


# ----------------------------------------------------------------------------- PyTorch

def _torch():
    return pytest.importorskip("torch")


def _nchw(t, a):
    return a.permute(0, 3, 1, 2)


def _torch_cases(t):
    F = t.nn.functional

    def conv(x, w, b):  # (2, 1) stride, ((1, 0), (2, 1)) padding
        xp = F.pad(_nchw(t, x), (2, 1, 1, 0))
        return F.conv2d(xp, w.permute(3, 2, 0, 1), b, stride=(2, 1)).permute(0, 2, 3, 1)

    def pool(kind):
        def run(x):
            xp = F.pad(_nchw(t, x), (0, 1, 1, 1), value=-np.inf if kind == "max" else 0.0)
            y = (F.max_pool2d(xp, (3, 2), (2, 1)) if kind == "max"
                 else F.avg_pool2d(xp, (3, 2), (2, 1)))
            return y.permute(0, 2, 3, 1)
        return run

    def lrn(x):
        y = F.local_response_norm(_nchw(t, x), 3, alpha=0.3 * 3, beta=0.75, k=2.0)
        return y.permute(0, 2, 3, 1)

    def bn(x, g, b):
        return F.batch_norm(_nchw(t, x), None, None, g, b, training=True,
                            eps=1e-5).permute(0, 2, 3, 1)

    def gn(x, g, b):
        return F.group_norm(_nchw(t, x), 2, g, b, eps=1e-5).permute(0, 2, 3, 1)

    labels = t.tensor(np.asarray(_LABELS))
    return {
        "conv2d": (lambda x, w, b: conv(x, w, b), (0, 1, 2)),
        "conv2d_relu": (lambda x, w, b: t.relu(conv(x, w, b)), (0, 1, 2)),
        "max_pool2d": (pool("max"), (0,)),
        "pad": (lambda x: F.pad(_nchw(t, x), (3, 1, 1, 2), mode="reflect").permute(0, 2, 3, 1),
                (0,)),
        "adaptive_avg_pool": (lambda x: F.adaptive_avg_pool2d(_nchw(t, x), (3, 2)).permute(
            0, 2, 3, 1), (0,)),
        "upsample": (lambda x: F.interpolate(_nchw(t, x), scale_factor=2, mode="bilinear",
                                             align_corners=False).permute(0, 2, 3, 1), (0,)),
        "avg_pool2d": (pool("avg"), (0,)),
        "dense": (lambda x, w, b: x @ w + b, (0, 1, 2)),
        "relu": (t.relu, (0,)),
        "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), (0,)),
        "elu": (lambda x: F.elu(x, 0.5), (0,)),
        "sigmoid": (t.sigmoid, (0,)),
        "tanh": (t.tanh, (0,)),
        "softmax_cross_entropy": (lambda z: F.cross_entropy(z, labels), (0,)),
        "mse": (F.mse_loss, (0, 1)),
        "hinge": (lambda s: F.multi_margin_loss(s, labels) * s.shape[-1], (0,)),
        "local_response_norm": (lrn, (0,)),
        "batch_norm": (bn, (0, 1, 2)),
        "batch_norm_relu": (lambda x, g, b: t.relu(bn(x, g, b)), (0, 1, 2)),
        "group_norm": (gn, (0, 1, 2)),
    }


TORCH_NAMES = ["conv2d", "conv2d_relu", "max_pool2d", "pad", "adaptive_avg_pool", "upsample",
               "avg_pool2d", "dense", "relu",
               "leaky_relu", "elu", "sigmoid", "tanh", "softmax_cross_entropy", "mse", "hinge",
               "local_response_norm", "batch_norm", "batch_norm_relu", "group_norm"]

# Where PyTorch's own choice differs from fcnn's (and its oracle's), and why, by op and special
# value (or op and placement); each is checked to still differ, so the list stays true.
TORCH_DIFFERS = {
    # PyTorch's slope at NaN is the negative slope (fcnn: 1, the identity piece, as PyTorch's
    # own relu and elu and fcnn's max pool)
    ("leaky_relu", "nan"): "slope",
    # PyTorch's multi_margin_loss drops a NaN margin (max(0, NaN) as 0): a finite loss
    ("hinge", "nan"): "value",
    # PyTorch's batch norm computes x * scale + shift (scale = gamma / sigma, shift = beta -
    # mean * scale): an infinite gamma makes inf - inf = NaN where the oracle's gamma * xhat +
    # beta is an infinity; the ReLU after it then keeps PyTorch's NaN and zeroes fcnn's -inf
    # (keyed by the placement: only gamma's infinities)
    ("batch_norm_relu", "argument 1 = +inf"): "value",
    ("batch_norm_relu", "argument 1 = -inf"): "value",
}


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_special_values_match_pytorch(name):
    t = _torch()
    t_fn, _ = _torch_cases(t)[name]
    fcnn_fn, _, args, _ = CASES[name]
    f = _bound(name, fcnn_fn)
    if name.startswith("batch_norm"):
        f = lambda *a: _bound(name, fcnn_fn)(*a)[0]
    programs, u = _programs(f, args)
    for where, label, a, _ in _cases(args, u):
        if "cotangent" in where:
            continue
        tensors = [t.tensor(np.asarray(v), requires_grad=True) for v in a]
        y_t = t_fn(*tensors)
        grads = t.autograd.grad(y_t, tensors, t.tensor(np.asarray(u)).reshape(y_t.shape),
                                allow_unused=True)
        y, d = programs["value"](a, u), programs["vjp"](a, u)
        try:
            assert_same_nonfinite(y, y_t.detach().numpy().reshape(y.shape),
                                  f"{name}, {where}: value vs PyTorch", label)
            for k, (g, gt) in enumerate(zip(d, grads, strict=True)):
                gt = np.zeros(g.shape) if gt is None else gt.numpy()
                assert_same_nonfinite(g, gt, f"{name}, {where}: gradient of argument {k} vs "
                                      "PyTorch", label)
        except AssertionError:
            if (name, label) not in TORCH_DIFFERS and (name, where) not in TORCH_DIFFERS:
                raise
        else:
            assert (name, label) not in TORCH_DIFFERS and (name, where) not in TORCH_DIFFERS, (
                f"{name}, {where}: no longer differs")
