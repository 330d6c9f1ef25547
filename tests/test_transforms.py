"""Convolution and dense under every JAX transformation through fcnn's own rules (the primitive
binding): forward mode, second order, linearize and vmap over examples and over members, equal
to the oracle in float64 — with lax's JVP and transpose rules for its convolution (and its dot)
made unavailable, so none of them can be what differentiates."""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax.extend.core import primitives
from jax.interpreters import ad, batching
from jax.test_util import check_grads

import models
from fcnn import layers as fcnn_layers
from fcnn import ops
from fcnn import reference as R
from fcnn.layers import with_ops
from fcnn.ops._bilinear import UNROLL_MAX
from fcnn.ops.convolution.algorithms import ALGORITHMS
from fcnn.testing import assert_close
from tests.strategies import distinct, dtype_for, normal

pytestmark = pytest.mark.skipif(ops.binding() != "primitive",
                                reason="forward mode needs the primitive binding")
KW = dict(stride=2, padding=((1, 0), (2, 1)), dilation=(1, 2))
DERIVATIVES = (ad.primitive_jvps, ad.primitive_transposes)
BATCHING = (batching.fancy_primitive_batchers,)  # where lax registers its convolution's


@contextlib.contextmanager
def lax_conv_rules_refused(tables=DERIVATIVES, p=lax.conv_general_dilated_p):
    """lax's rules for `p` (its convolution) in `tables` (by default its JVP and transpose
    rules) raise inside the block. Its batching rule may still run inside fcnn's own primitives'
    computation (a members axis: `fcnn.ops._bilinear.each`), never in a derivative."""
    missing = object()
    saved = [table.get(p, missing) for table in tables]

    def refuse(*args, **kwargs):
        raise AssertionError(f"lax's {p.name} rule was called")

    for table in tables:
        table[p] = refuse
    jax.clear_caches()  # no derivative JAX cached before (e.g. of jnp.matmul) can stand in
    try:
        yield
    finally:
        jax.clear_caches()
        for table, rule in zip(tables, saved, strict=True):
            if rule is missing:
                table.pop(p, None)
            else:
                table[p] = rule


def _maps(algorithm, groups=1):
    """name -> (fcnn's map, the oracle's, its two arguments) for the three maps."""
    dtype = dtype_for(algorithm)
    x, w = normal(0, (2, 7, 9, 4), dtype), normal(1, (3, 2, 4 // groups, 6), dtype)
    kw = dict(KW, groups=groups)
    g = normal(2, R.conv2d(x, w, **kw).shape, dtype)
    return {
        "conv2d": (lambda x, w: ops.conv2d(x, w, algorithm=algorithm, **kw),
                   lambda x, w: R.conv2d(x, w, **kw), (x, w)),
        "grad_input": (lambda g, w: ops.conv2d_grad_input(g, w, x.shape, algorithm=algorithm,
                                                           **kw),
                       lambda g, w: jax.vjp(lambda x: R.conv2d(x, w, **kw), x)[1](g)[0], (g, w)),
        "grad_kernel": (lambda x, g: ops.conv2d_grad_kernel(x, g, w.shape, algorithm=algorithm,
                                                             **kw),
                        lambda x, g: jax.vjp(lambda w: R.conv2d(x, w, **kw), w)[1](g)[0], (x, g)),
    }


def assert_trees_close(got, want, what):
    """assert_close leaf by leaf over two pytrees of the same structure."""
    leaves = zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True)
    for i, (a, b) in enumerate(leaves):
        assert_close(a, b, f"{what}, leaf {i}")


def _scalar(f):
    """A nonlinear scalar of a map's output, so that second derivatives are not zero."""
    return lambda a, b: jnp.sum(jnp.sin(f(a, b)))


def _derivatives(f, args, tangents):
    """jvp, linearize, Hessian in the second argument (jacfwd of jacrev: vmapped JVPs) and a
    forward-over-reverse Hessian-vector product."""
    s = _scalar(f)
    _, linear = jax.linearize(f, *args)
    return dict(
        jvp=jax.jvp(f, args, tangents),
        linearize=linear(*tangents),
        hessian=jax.hessian(s, 1)(*args),
        hvp=jax.jvp(jax.grad(lambda a: s(a, args[1])), args[:1], tangents[:1]),
    )


# The rules do not depend on the algorithm (it only computes each map, proven equal per map by
# the sweeps of test_conv.py): the default run takes "auto", the grouped taps and oneDNN's
# foreign kernel where it is built; the thorough profile every algorithm.
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
DEFAULT_RUN = ["auto", "taps"] + [a for a in ALGORITHMS if a == "onednn"]


@pytest.mark.parametrize("algorithm", ["auto", *ALGORITHMS] if THOROUGH else DEFAULT_RUN)
@pytest.mark.parametrize("name", ["conv2d", "grad_input", "grad_kernel"])
def test_forward_mode_and_second_order_equal_the_oracle(name, algorithm):
    ours, oracle, args = _maps(algorithm, groups=2 if algorithm == "taps" else 1)[name]
    tangents = (normal(3, args[0].shape, args[0].dtype), normal(4, args[1].shape, args[1].dtype))
    want = _derivatives(oracle, args, tangents)
    with lax_conv_rules_refused():
        with pytest.raises(AssertionError, match="lax's conv_general_dilated rule"):  # guard on
            jax.jvp(oracle, args, tangents)
        got = _derivatives(ours, args, tangents)
    for key in want:
        assert_trees_close(got[key], want[key], key)


def test_jax_gradient_checker_passes_at_second_order_both_modes():
    x, w = normal(0, (1, 5, 6, 2)), normal(1, (3, 3, 2, 3))
    with lax_conv_rules_refused():
        check_grads(lambda x, w: ops.conv2d(x, w, padding=1), (x, w), order=2,
                    modes=("fwd", "rev"))


@pytest.mark.parametrize("members", [3, UNROLL_MAX + 1])  # unrolled; one members primitive
@pytest.mark.parametrize("groups", [1, 2])
def test_vmap_over_members_and_examples_runs_fcnn_rules(groups, members):
    """K members (kernels, and inputs) mapped together, and examples mapped alone: values,
    per-member gradients and per-example gradients equal a loop over the oracle, with lax's
    JVP, transpose and batching rules for its convolution unavailable (past UNROLL_MAX, members
    with a batch each run in a loop inside one primitive)."""
    kw = dict(KW, groups=groups)
    xs, ws = normal(0, (members, 2, 7, 9, 4)), normal(1, (members, 3, 2, 4 // groups, 6))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.tanh(conv(x, w, **kw)) ** 2)

    want_y = jnp.stack([R.conv2d(x, w, **kw) for x, w in zip(xs, ws)])
    want_shared = jnp.stack([R.conv2d(xs[0], w, **kw) for w in ws])
    want_g = [jax.grad(loss(R.conv2d), (0, 1))(x, w) for x, w in zip(xs, ws)]
    want_ex = jnp.stack([jax.grad(loss(R.conv2d), 1)(xs[0][i:i + 1], ws[0]) for i in range(2)])
    with lax_conv_rules_refused(DERIVATIVES + BATCHING):
        y = jax.vmap(lambda x, w: ops.conv2d(x, w, **kw))(xs, ws)
        shared = jax.vmap(lambda w: ops.conv2d(xs[0], w, **kw))(ws)
        g = jax.jit(jax.vmap(jax.grad(loss(ops.conv2d), (0, 1))))(xs, ws)
        ex = jax.vmap(jax.grad(loss(ops.conv2d), 1), (0, None))(xs[0][:, None], ws[0])
    assert_close(y, want_y, "members")
    assert_close(shared, want_shared, "members sharing the input")
    for k in range(members):
        assert_trees_close((g[0][k], g[1][k]), want_g[k], f"member {k}'s gradients")
    assert_close(ex, want_ex, "per-example gradients")


@pytest.mark.parametrize("k", [4, UNROLL_MAX + 1])
def test_an_ensemble_computes_no_grouped_convolution(k):
    """Under vmap over kernels, up to UNROLL_MAX members run one convolution each (with their
    own algorithms), more run in a loop: the program holds no grouped convolution (XLA:CPU's
    slow path), where JAX's batching of a convolution (the custom_vjp binding) makes one."""
    xs, ws = normal(0, (k, 2, 12, 12, 6)), normal(1, (k, 5, 5, 6, 16))

    def loss(x, w):
        return jnp.sum(ops.conv2d(x, w) ** 2)

    step = jax.vmap(jax.value_and_grad(loss, (0, 1)))
    text = jax.jit(step).lower(xs, ws).as_text()
    assert f"feature_group_count = {k}" not in text and f"batch_group_count = {k}" not in text
    with ops.using_binding("custom_vjp"):
        text = jax.jit(lambda xs, ws: step(xs, ws)).lower(xs, ws).as_text()
    assert f"feature_group_count = {k}" in text


def test_dense_under_every_transformation():
    """dense (x @ w): jvp, linearize, Hessian, forward-over-reverse, check_grads at order 2 in
    both modes, vmap over examples, over members and nested — with lax's dot_general JVP and
    transpose rules unavailable."""
    x, w, xs = normal(0, (4, 5)), normal(1, (5, 3)), normal(2, (3, 2, 4, 5))
    ws = jnp.stack([w, 2 * w, -w])
    t = (normal(3, x.shape), normal(4, w.shape))

    def scalar(dense):
        return lambda x, w: jnp.sum(jnp.sin(dense(x, w)))

    def everything(dense):
        f = scalar(dense)
        return dict(jvp=jax.jvp(dense, (x, w), t), linearize=jax.linearize(dense, x, w)[1](*t),
                    hessian=jax.hessian(f, (0, 1))(x, w),
                    hvp=jax.jvp(jax.grad(lambda x: f(x, w)), (x,), t[:1]),
                    examples=jax.vmap(jax.grad(f, 1), (0, None))(x[:, None], w),
                    members=jax.vmap(jax.grad(f, (0, 1)))(xs[:, 0], ws),
                    nested=jax.vmap(jax.vmap(jax.grad(f, (0, 1)), (0, None)))(xs, ws))

    want = everything(R.dense)
    with lax_conv_rules_refused(p=lax.dot_general_p):
        with pytest.raises(AssertionError, match="lax's dot_general rule"):  # the guard is live
            jax.grad(scalar(R.dense))(x, w)
        got = everything(ops.dense)
        check_grads(ops.dense, (x, w), order=2, modes=("fwd", "rev"))
    for key in want:
        assert_trees_close(got[key], want[key], key)


def test_biases_in_forward_mode():
    """conv2d and dense with a bias: jvp in every argument and the Hessian in the bias equal
    the oracle's (the bias's JVP is the bias add itself; reverse mode transposes it)."""
    x, w, b = normal(0, (2, 6, 6, 3)), normal(1, (3, 3, 3, 4)), normal(2, (4,))
    z, v, c = normal(3, (5, 7)), normal(4, (7, 4)), normal(5, (4,))
    cases = [((x, w, b), lambda mod: lambda *a: mod.conv2d(*a, padding=1)),
             ((z, v, c), lambda mod: mod.dense)]
    for args, op in cases:
        tangents = tuple(normal(9 + i, a.shape) for i, a in enumerate(args))
        assert_trees_close(jax.jvp(op(ops), args, tangents), jax.jvp(op(R), args, tangents),
                           "jvp")
        scalar = [lambda *a, f=op(mod): jnp.sum(jnp.sin(f(*a))) for mod in (ops, R)]
        assert_trees_close(jax.hessian(scalar[0], 2)(*args), jax.hessian(scalar[1], 2)(*args),
                           "hessian")


POOL_RULES = [getattr(primitives, n) for n in (
    "reduce_window_p", "reduce_window_max_p", "reduce_window_sum_p", "select_and_gather_add_p",
    "select_and_scatter_add_p", "select_and_scatter_p")]


@contextlib.contextmanager
def lax_rules_refused(prims):
    """lax's JVP and transpose rules for every primitive in `prims` raise inside the block."""
    with contextlib.ExitStack() as stack:
        for p in prims:
            stack.enter_context(lax_conv_rules_refused(p=p))
        yield


# overlapping max and tiling average windows every run; the other two under the thorough profile
@pytest.mark.parametrize("name,kw", [
    c for i, c in enumerate([("max_pool2d", dict(window=3, stride=2, padding=1)),
                             ("max_pool2d", dict(window=2)),
                             ("avg_pool2d", dict(window=3, stride=2, padding=1)),
                             ("avg_pool2d", dict(window=2))]) if THOROUGH or i in (0, 3)])
def test_pooling_under_every_transformation(name, kw):
    """jvp, linearize, Hessian, forward-over-reverse, check_grads at order 2 in both modes and
    vmap over examples, equal to the oracle, with lax's window-reduction rules unavailable."""
    x = distinct(0, (2, 7, 8, 3)) / 10  # no ties: the argmax, and finite differences, are clean
    t = normal(1, x.shape)

    def everything(pool):
        f = lambda x: pool(x, **kw)  # noqa: E731
        s = lambda x: jnp.sum(jnp.sin(f(x)))  # noqa: E731
        return dict(jvp=jax.jvp(f, (x,), (t,)), linearize=jax.linearize(f, x)[1](t),
                    hessian=jax.hessian(s)(x[:1, :5, :5, :1]),
                    hvp=jax.jvp(jax.grad(s), (x,), (t,)),
                    examples=jax.vmap(jax.grad(s))(x[:, None]))

    want = everything(getattr(R, name))
    with lax_rules_refused(POOL_RULES):
        with pytest.raises(AssertionError, match="lax's reduce_window"):  # the guard is live
            jax.jvp(lambda x: lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1),
                                                "VALID"), (x,), (t,))
        got = everything(getattr(ops, name))
        check_grads(lambda x: getattr(ops, name)(x, **kw), (x,), order=2, modes=("fwd", "rev"))
    for key in want:
        assert_trees_close(got[key], want[key], key)


# LeNet-5 in every run; the CIFAR net and ResNet (about 13 s of the 2-core suite) in the thorough
# profile — their layers are LeNet's plus the padded and strided convs the op tests cover.
MODELS = [("lenet5", (28, 28, 1)), ("cs231n_convnet", (32, 32, 3)),
          ("resnet_no_bn", (32, 32, 3))]


@pytest.mark.parametrize("name,shape", MODELS if THOROUGH else MODELS[:1])
def test_whole_models_in_forward_mode(name, shape):
    """A model's jvp in its parameters and a forward-over-reverse Hessian-vector product of its
    training loss equal the same model and loss on the oracle's ops, in float64, with lax's
    convolution, dot and pooling rules unavailable to fcnn's side."""
    net = getattr(models, name)(num_classes=10)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                    net.init(jax.random.key(0), shape)[0])
    x = normal(1, (2, *shape))
    tangent = jax.tree_util.tree_map(lambda p: normal(2, p.shape), params)

    y = jnp.arange(2) % 10

    def derivatives(model, loss):  # one jitted program per side (eager: 2x the time)
        s = lambda p: loss(model.apply(p, x), y)  # noqa: E731
        return jax.jit(lambda: dict(
            jvp=jax.jvp(lambda p: model.apply(p, x), (params,), (tangent,)),
            hvp=jax.jvp(jax.grad(s), (params,), (tangent,))))()

    want = derivatives(with_ops(net, R), R.softmax_cross_entropy)
    with lax_rules_refused([lax.conv_general_dilated_p, lax.dot_general_p, *POOL_RULES]):
        got = derivatives(net, ops.softmax_cross_entropy)
    for key in want:
        assert_trees_close(got[key], want[key], key)


def test_a_batch_norm_resnet_in_forward_mode_and_its_hessian():
    """A residual net with batch norm in training mode (option-A shortcut included): the jvp of
    its output and new state in the parameters, a Hessian-vector product of its loss, and
    `jax.hessian` of the loss in the first batch norm's scale (so every layer after it is
    differentiated twice), equal to the oracle's in float64, with lax's convolution, dot and
    pooling rules unavailable to fcnn's side. One jitted program per side (the op-by-op eager
    run of the same three costs 4x the time)."""
    from models.resnet import basic_block, conv_bn

    shortcut = fcnn_layers.serial(fcnn_layers.MaxPool2D(1, stride=2), fcnn_layers.PadChannels(4))
    net = fcnn_layers.serial(conv_bn(2, 3, 1, 1), fcnn_layers.ReLU(),
                             basic_block(4, 2, shortcut), fcnn_layers.GlobalAvgPool2D(),
                             fcnn_layers.Dense(3))
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                    net.init(jax.random.key(0), (6, 6, 1))[0])
    state = net.init_state((6, 6, 1))
    x, y = normal(1, (2, 6, 6, 1)), jnp.array([2, 0])
    tangent = jax.tree_util.tree_map(lambda p: normal(2, p.shape), params)

    def derivatives(model, loss):
        run = lambda p: model.apply(p, x, state=state, train=True)  # noqa: E731
        s = lambda p: loss(run(p)[0], y)  # noqa: E731

        def in_gamma(gamma):  # params[0] = conv_bn's (conv, batch norm)
            bn = dict(params[0][1], gamma=gamma)
            return s(((params[0][0], bn), *params[1:]))

        return jax.jit(lambda: dict(jvp=jax.jvp(run, (params,), (tangent,)),
                                    hvp=jax.jvp(jax.grad(s), (params,), (tangent,)),
                                    hessian=jax.hessian(in_gamma)(params[0][1]["gamma"])))()

    want = derivatives(with_ops(net, R), R.softmax_cross_entropy)
    with lax_rules_refused([lax.conv_general_dilated_p, lax.dot_general_p, *POOL_RULES]):
        got = derivatives(net, ops.softmax_cross_entropy)
    assert got["hessian"].shape == (2, 2)
    for key in want:
        assert_trees_close(got[key], want[key], key)


_RANKED = {  # (fcnn op, the oracle's, arguments, configuration): 1-D, 3-D and transposed
    "conv1d": (ops.conv1d, R.conv1d, ((2, 9, 3), (3, 3, 4)), dict(stride=2, padding=1)),
    "conv3d": (ops.conv3d, R.conv3d, ((1, 4, 5, 4, 2), (2, 3, 2, 1, 4)),
               dict(stride=(1, 2, 1), padding=1, groups=2)),
    "conv_transpose1d": (ops.conv_transpose1d, R.conv_transpose1d, ((2, 5, 3), (3, 2, 3)),
                         dict(stride=2, padding=1, output_padding=1)),
    "conv_transpose2d": (ops.conv_transpose2d, R.conv_transpose2d,
                         ((1, 3, 4, 4), (4, 4, 1, 4)), dict(stride=2, padding=1, groups=2)),
    "conv_transpose3d": (ops.conv_transpose3d, R.conv_transpose3d,
                         ((1, 2, 3, 2, 2), (2, 2, 2, 3, 2)), dict(stride=2)),
    "max_pool3d": (ops.max_pool3d, R.max_pool3d, ((1, 4, 5, 4, 2),), dict(window=2, stride=1)),
    "avg_pool1d": (ops.avg_pool1d, R.avg_pool1d, ((2, 9, 3),), dict(window=3, stride=2,
                                                                    padding=1)),
}


@pytest.mark.parametrize("name", sorted(n for n in _RANKED if THOROUGH or n in (
    "conv1d", "conv_transpose3d", "max_pool3d")))  # every run three; the thorough profile all
def test_other_ranks_and_transposed_under_every_transformation(name):
    """jvp, the Hessian of a scalar function and forward-over-reverse, equal to the oracle's
    autodiff, with lax's convolution and window-reduction rules unavailable: the 1-D, 3-D and
    transposed maps run fcnn's rules in every mode."""
    ours, oracle, shapes, kw = _RANKED[name]
    args = tuple((distinct if i == 0 else normal)(i, s) / (10 if i == 0 else 1)
                 for i, s in enumerate(shapes))
    tangents = tuple(normal(5 + i, a.shape) for i, a in enumerate(args))

    def everything(f):
        fn = lambda *a: f(*a, **kw)  # noqa: E731
        scalar = lambda *a: jnp.sum(jnp.sin(fn(*a)))  # noqa: E731
        return dict(jvp=jax.jvp(fn, args, tangents),
                    hessian=jax.hessian(scalar, 0)(*args),
                    hvp=jax.jvp(jax.grad(scalar), args[:1], tangents[:1]) if len(args) == 1
                    else jax.jvp(jax.grad(lambda w: scalar(args[0], w)), args[1:], tangents[1:]))

    want = everything(oracle)
    with lax_rules_refused([lax.conv_general_dilated_p, *POOL_RULES]):
        got = everything(ours)
    for key in want:
        assert_trees_close(got[key], want[key], key)
