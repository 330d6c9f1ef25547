"""max_pool{1,2,3}d / avg_pool{1,2,3}d: hand-written rules against autodiff of the plain-lax oracle
(the sweeps draw the rank; the named cases are 2-D)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from jax.test_util import check_grads

from fcnn import ops
from fcnn import reference as R
from fcnn.ops import pool as pool_mod
from fcnn.testing import assert_close, check_vjp
from tests.strategies import costly, distinct, normal, pool_cases

POOLS = [(ops.max_pool2d, R.max_pool2d), (ops.avg_pool2d, R.avg_pool2d)]
IDS = ["max", "avg"]
# forward and reverse where the binding has forward mode (the default), else reverse only
MODES = ["fwd", "rev"] if ops.binding() == "primitive" else ["rev"]


def _bind(f, case):
    """`f` (a 2-D pool of fcnn or the oracle) as the case's rank's pool, on its geometry."""
    ranked = getattr(inspect.getmodule(f), f.__name__.replace("2d", f"{case['rank']}d"))
    return lambda x: ranked(x, case["window"], case["stride"], case["padding"])


@pytest.mark.parametrize("pool", POOLS, ids=IDS)
@given(case=pool_cases())
def test_value_and_vjp_match_autodiff(case, pool):
    x = distinct(0, case["shape"])  # no ties: the argmax is unambiguous
    check_vjp(_bind(pool[0], case), _bind(pool[1], case), x)


@costly(ci_examples=7)  # the rules are proven in float64 above; this sweeps float32's dtype path
@pytest.mark.parametrize("pool", POOLS, ids=IDS)
@given(case=pool_cases())
def test_value_and_vjp_match_autodiff_in_float32(case, pool):
    x = distinct(0, case["shape"], jnp.float32)
    check_vjp(_bind(pool[0], case), _bind(pool[1], case), x)


@costly(ci_examples=7)
@pytest.mark.parametrize("pool", POOLS, ids=IDS)
@given(case=pool_cases())
def test_grad_of_grad_matches_autodiff(case, pool):
    x = distinct(1, case["shape"])

    def second(f):
        inner = lambda x: jnp.sum(jnp.sin(3 * f(x)) ** 2)
        return jax.jit(jax.grad(lambda x: jnp.sum(jnp.cos(jax.grad(inner)(x)))))

    assert_close(second(_bind(pool[0], case))(x), second(_bind(pool[1], case))(x), "d2/dx")


def _scatter(pool):
    """(x, g) -> dx of `pool` at x: the max-pool backward, linear in g."""
    return lambda x, g: jax.vjp(pool, x)[1](g)[0]


def _gather(pool, g):
    """(x, ct) -> d<scatter(x, g), ct>/dg at `g`: the scatter's own rule, linear in ct."""
    return lambda x, ct: jax.vjp(lambda g: _scatter(pool)(x, g), g)[1](ct)[0]


# stride == window with 32+ channels (the CIFAR net's pools): max pool's backward writes every
# window's block with one select, `(N, H_out, kh, W_out, kw, C)`, instead of a write per tap.
TILED = [
    ((2, 8, 8, 32), 2, 0),  # exact tiling
    ((2, 9, 7, 32), 2, 0),  # floor remainder: the last row and column are in no window
    ((2, 10, 11, 40), (3, 2), ((1, 0), (0, 1))),  # non-square, asymmetric padding, remainders
    ((10, 9, 33), 3, ((2, 1), (1, 0))),  # unbatched, padding on both sides, remainders
]


@pytest.mark.parametrize("shape,window,padding", TILED)
def test_tiled_max_pool_backward_and_its_second_order_rules(shape, window, padding):
    """Value and VJP of the tiled max-pool backward (the scatter) in float64 and float32, and in
    float64 its own rules: d/dg of the scatter is the gather, whose d/dct is the scatter again;
    d/dx of both is 0."""
    def pool(impl):
        return lambda x: impl(x, window, None, padding)

    def scatter(impl):
        return _scatter(pool(impl))

    def gather(impl):
        return _gather(pool(impl), g)

    x = distinct(8, shape)  # no ties: the argmax is unambiguous
    g = normal(9, jax.eval_shape(pool(ops.max_pool2d), x).shape)
    n, h, w, c = x.shape if x.ndim == 4 else (1, *x.shape)
    (kh, kw), ((pt, pb), (pl, pr)) = np.broadcast_to(window, 2), np.broadcast_to(padding, (2, 2))
    blocks = f"[{n},{(h + pt + pb) // kh},{kh},{(w + pl + pr) // kw},{kw},{c}]"
    lowered = jax.jit(scatter(ops.max_pool2d)).lower(x, g).as_text()  # the computation itself
    assert f"tensor<{blocks[1:-1].replace(',', 'x')}x" in lowered, "not the tiled path"
    check_vjp(scatter(ops.max_pool2d), scatter(R.max_pool2d), x, g)
    check_vjp(gather(ops.max_pool2d), gather(R.max_pool2d), x, normal(10, x.shape))
    x32 = distinct(8, shape, jnp.float32)
    check_vjp(pool(ops.max_pool2d), pool(R.max_pool2d), x32)


# Windows that tile an unpadded input with fewer than 16 channels: the backward reads every tap
# as a slice of the `(N, H_out, kh, W_out, kw * C)` view and writes dX by concatenation.
NARROW_TILES = [
    ((2, 8, 8, 6), 2),  # LeNet-5's first pool, smaller
    ((3, 9, 7, 1), 2),  # one channel, floor remainders
    ((2, 10, 11, 15), (3, 2)),  # non-square window, remainders, 15 channels
    ((9, 6, 3), 3),  # unbatched
]


@pytest.mark.parametrize("shape,window", NARROW_TILES)
def test_narrow_tiled_max_pool_backward_with_ties(shape, window):
    """The narrow-tile backward against autodiff of lax's max pool (select_and_scatter), with
    many ties (a ReLU's zeros, values rounded to one decimal: the first maximum in row-major
    window order takes g), in float64 and float32, and its second-order rule (the gather)."""
    def pool(impl):
        return lambda x: impl(x, window)

    def scatter(impl):
        return _scatter(pool(impl))

    def gather(impl):
        return _gather(pool(impl), g)

    for dtype in (jnp.float64, jnp.float32):
        x = jnp.round(jnp.maximum(normal(11, shape, dtype), 0), 1)
        assert int(jnp.sum(x == 0)) > x.size // 3  # ties in most windows
        g = normal(12, jax.eval_shape(pool(ops.max_pool2d), x).shape, dtype)
        check_vjp(scatter(ops.max_pool2d), scatter(R.max_pool2d), x, g)
        check_vjp(gather(ops.max_pool2d), gather(R.max_pool2d), x, normal(13, x.shape, dtype))
        if dtype == jnp.float64:  # (float32 runs the native kernel where it is built)
            n, h, w, c = x.shape if x.ndim == 4 else (1, *x.shape)
            kh, kw = np.broadcast_to(window, 2)
            view = f"tensor<{n}x{h // kh}x{kh}x{w // kw}x{kw * c}x"
            lowered = jax.jit(scatter(ops.max_pool2d)).lower(x, g).as_text()
            assert view in lowered, "not the narrow path"


@pytest.mark.parametrize("pool", POOLS, ids=IDS)
def test_finite_differences(pool):
    x = distinct(2, (2, 7, 6, 3))
    check_grads(lambda x: pool[0](x, 3, 2, 1), (x,), order=2, modes=MODES, eps=1e-4)


@given(case=pool_cases())
def test_avg_pool_adjoint_identity(case):
    """avg pool is linear: <P v, u> == <v, P^T u> with P^T the hand-written backward."""
    f = _bind(ops.avg_pool2d, case)
    v = distinct(3, case["shape"])
    u = distinct(4, jax.eval_shape(f, v).shape)

    @jax.jit
    def products(v, u):
        y, vjp = jax.vjp(f, v)
        return jnp.vdot(y, u), jnp.vdot(v, vjp(u)[0])

    forward, adjoint = products(v, u)
    np.testing.assert_allclose(forward, adjoint, rtol=1e-12, atol=1e-12)


def test_max_pool_tie_goes_to_first_in_row_major_window_order():
    x = jnp.array([[1.0, 3.0, 0.0, 0.0],
                   [3.0, 3.0, 0.0, 0.0],
                   [2.0, 2.0, 5.0, 4.0],
                   [2.0, 2.0, 5.0, 5.0]])[..., None]
    g = jnp.array([[10.0, 20.0], [30.0, 40.0]])[..., None]
    _, vjp = jax.vjp(lambda x: ops.max_pool2d(x, 2), x)
    want = jnp.array([[0.0, 10.0, 20.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0],
                      [30.0, 0.0, 40.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0]])[..., None]
    np.testing.assert_array_equal(vjp(g)[0], want)


@pytest.mark.parametrize("args", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), "SAME")])
def test_max_pool_ties_agree_with_xla_select_and_scatter(args):
    """After a ReLU most windows tie at 0; XLA's own gradient makes the same choice."""
    x = jnp.maximum(jnp.round(jax.random.normal(jax.random.key(5), (2, 8, 9, 3))), 0.0)
    check_vjp(lambda x: ops.max_pool2d(x, *args), lambda x: R.max_pool2d(x, *args), x)


def test_padded_cells_never_win_and_average_counts_them():
    x = -jnp.ones((2, 2, 1))
    np.testing.assert_array_equal(ops.max_pool2d(x, 2, 1, 1)[..., 0], -jnp.ones((3, 3)))
    # corner windows hold one real cell and three padded zeros: -1 / 4
    np.testing.assert_array_equal(ops.avg_pool2d(x, 2, 1, 1)[0, 0, 0], -0.25)


def test_avg_pool_by_hand():
    x = jnp.arange(16.0).reshape(4, 4, 1)
    np.testing.assert_array_equal(ops.avg_pool2d(x, 2)[..., 0], [[2.5, 4.5], [10.5, 12.5]])
    dx = jax.grad(lambda x: jnp.sum(ops.avg_pool2d(x, 2)))(x)
    np.testing.assert_array_equal(dx, jnp.full((4, 4, 1), 0.25))


@pytest.mark.parametrize("pool", POOLS, ids=IDS)
def test_vmap_jit_and_dtypes(pool):
    x = distinct(6, (3, 6, 6, 2), jnp.float32)
    f = lambda x: pool[0](x, 2)
    batched = f(x)
    assert_close(jax.vmap(f)(x), batched, "vmap")
    assert_close(jax.jit(f)(x), batched, "jit")
    for dtype in (jnp.bfloat16, jnp.float16):
        y, vjp = jax.vjp(f, x.astype(dtype))
        assert y.dtype == dtype and vjp(y)[0].dtype == dtype


# Sizes at which XLA's CPU compiler hands a max reduction (reduce_window, or jnp.max over blocks)
# to YNNPACK, whose maximum drops a NaN (the window's largest number comes out), and the CIFAR
# net's and an overlapping pool's: every window holding a NaN must give NaN.
NAN_SIZES = [((4, 28, 28, 6), 2, None, 0), ((2, 32, 32, 32), 2, None, 0),
             ((2, 15, 15, 8), 3, 2, 1)]


@pytest.mark.parametrize("shape,window,stride,padding", NAN_SIZES)
@pytest.mark.parametrize("taps_alone", [True, False])  # both formulations of tiling windows
def test_every_window_holding_a_nan_pools_to_nan(shape, window, stride, padding, taps_alone,
                                                  monkeypatch):
    monkeypatch.setattr(pool_mod, "_after_native", lambda x: taps_alone)
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, size=shape).astype(np.float32)
    x[rng.random(shape) < 0.05] = np.nan
    want = np.isnan(R.max_pool2d(x, window, stride, padding))
    assert want.sum() > 100 and not want.all()
    for name, run in [("eager", ops.max_pool2d), ("jit", jax.jit(ops.max_pool2d,
                                                                 static_argnums=(1, 2, 3)))]:
        got = np.isnan(np.asarray(run(x, window, stride, padding)))
        np.testing.assert_array_equal(got, want, err_msg=name)
    # and each window's gradient goes to its first NaN, as the oracle's (small integer g: exact
    # sums where overlapping windows share a cell)
    g = rng.integers(1, 5, size=want.shape).astype(np.float32)

    def grad(pool):
        return jax.jit(lambda x, g: jax.vjp(lambda x: pool(x, window, stride, padding), x)[1](g))

    np.testing.assert_array_equal(grad(ops.max_pool2d)(x, g), grad(R.max_pool2d)(x, g))
