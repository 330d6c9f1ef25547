"""Convolution under every JAX transformation through fcnn's own rules (the primitive binding):
forward mode, second order, linearize and vmap over examples and over members, equal to the
oracle in float64 — with lax's convolution rules made unavailable, so none of them can be what
runs."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax.interpreters import ad, batching
from jax.test_util import check_grads

from fcnn import ops
from fcnn import reference as R
from fcnn.ops._conv_algorithms import ALGORITHMS
from fcnn.testing import assert_close
from tests.strategies import normal

pytestmark = pytest.mark.skipif(ops.binding() != "primitive",
                                reason="forward mode needs the primitive binding")
KW = dict(stride=2, padding=((1, 0), (2, 1)), dilation=(1, 2))
# lax registers its convolution's batching rule in the "fancy" table
RULES = (ad.primitive_jvps, ad.primitive_transposes, batching.fancy_primitive_batchers)


@contextlib.contextmanager
def lax_conv_rules_refused():
    """lax's JVP, transpose and batching rules for its convolution raise inside the block."""
    p, missing = lax.conv_general_dilated_p, object()
    saved = [table.get(p, missing) for table in RULES]

    def refuse(*args, **kwargs):
        raise AssertionError("lax's convolution rule was called")

    for table in RULES:
        table[p] = refuse
    try:
        yield
    finally:
        for table, rule in zip(RULES, saved, strict=True):
            if rule is missing:
                table.pop(p, None)
            else:
                table[p] = rule


def _maps(algorithm, groups=1):
    """name -> (fcnn's map, the oracle's, its two arguments) for the three maps."""
    x, w = normal(0, (2, 7, 9, 4)), normal(1, (3, 2, 4 // groups, 6))
    kw = dict(KW, groups=groups)
    g = normal(2, R.conv2d(x, w, **kw).shape)
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


def _close(got, want, what):
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


@pytest.mark.parametrize("algorithm", ["auto", *ALGORITHMS])
@pytest.mark.parametrize("name", ["conv2d", "grad_input", "grad_kernel"])
def test_forward_mode_and_second_order_equal_the_oracle(name, algorithm):
    ours, oracle, args = _maps(algorithm, groups=2 if algorithm == "taps" else 1)[name]
    tangents = (normal(3, args[0].shape), normal(4, args[1].shape))
    want = _derivatives(oracle, args, tangents)
    with lax_conv_rules_refused():
        with pytest.raises(AssertionError, match="lax's convolution rule"):  # the guard is live
            jax.jvp(oracle, args, tangents)
        got = _derivatives(ours, args, tangents)
    for key in want:
        _close(got[key], want[key], key)


def test_jax_gradient_checker_passes_at_second_order_both_modes():
    x, w = normal(0, (1, 5, 6, 2)), normal(1, (3, 3, 2, 3))
    with lax_conv_rules_refused():
        check_grads(lambda x, w: ops.conv2d(x, w, padding=1), (x, w), order=2,
                    modes=("fwd", "rev"))


@pytest.mark.parametrize("groups", [1, 2])
def test_vmap_over_members_and_examples_runs_fcnn_rules(groups):
    """K members (kernels, and inputs) mapped together, and examples mapped alone: values,
    per-member gradients and per-example gradients equal a loop over the oracle, with lax's
    batching and transpose rules unavailable."""
    kw = dict(KW, groups=groups)
    xs, ws = normal(0, (3, 2, 7, 9, 4)), normal(1, (3, 3, 2, 4 // groups, 6))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.tanh(conv(x, w, **kw)) ** 2)

    want_y = jnp.stack([R.conv2d(x, w, **kw) for x, w in zip(xs, ws)])
    want_shared = jnp.stack([R.conv2d(xs[0], w, **kw) for w in ws])
    want_g = [jax.grad(loss(R.conv2d), (0, 1))(x, w) for x, w in zip(xs, ws)]
    want_ex = jnp.stack([jax.grad(loss(R.conv2d), 1)(xs[0][i:i + 1], ws[0]) for i in range(2)])
    with lax_conv_rules_refused():
        y = jax.vmap(lambda x, w: ops.conv2d(x, w, **kw))(xs, ws)
        shared = jax.vmap(lambda w: ops.conv2d(xs[0], w, **kw))(ws)
        g = jax.jit(jax.vmap(jax.grad(loss(ops.conv2d), (0, 1))))(xs, ws)
        ex = jax.vmap(jax.grad(loss(ops.conv2d), 1), (0, None))(xs[0][:, None], ws[0])
    assert_close(y, want_y, "members")
    assert_close(shared, want_shared, "members sharing the input")
    for k in range(3):
        _close((g[0][k], g[1][k]), want_g[k], f"member {k}'s gradients")
    assert_close(ex, want_ex, "per-example gradients")


def test_members_compute_no_grouped_convolution_on_cpu():
    """Under vmap over kernels, "auto" folds the members into channel groups computed as batched
    GEMMs (im2col): the CPU program holds no grouped convolution, XLA:CPU's slow path."""
    xs, ws = normal(0, (4, 2, 12, 12, 6)), normal(1, (4, 5, 5, 6, 16))

    def loss(x, w):
        return jnp.sum(ops.conv2d(x, w) ** 2)

    text = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)))).lower(xs, ws).as_text()
    assert "feature_group_count = 4" not in text and "batch_group_count = 4" not in text
    assert "dot_general" in text
    with ops.using_binding("custom_vjp"):  # what JAX's own batching of a convolution gives
        text = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1)))).lower(xs, ws).as_text()
    assert "feature_group_count = 4" in text
