"""The pure-integer shape and padding arithmetic, against lax's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

from fcnn import _args


@given(size=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 5), d=st.integers(1, 3),
       lo=st.integers(0, 4), hi=st.integers(0, 4))
def test_output_size_matches_lax(size, k, s, d, lo, hi):
    f = _args.effective_window(k, d)
    if size + lo + hi < f:
        return
    want = jax.eval_shape(
        lambda x, w: lax.conv_general_dilated(x, w, (s,), [(lo, hi)], rhs_dilation=(d,)),
        jax.ShapeDtypeStruct((1, 1, size), jnp.float32),
        jax.ShapeDtypeStruct((1, 1, k), jnp.float32),
    ).shape[2]
    assert _args.output_size(size, f, s, (lo, hi)) == want
    r = _args.remainder(size, f, s, (lo, hi))
    assert (_args.output_size(size, f, s, (lo, hi)) - 1) * s + f + r == size + lo + hi


@given(size=st.integers(1, 40), f=st.integers(1, 9), s=st.integers(1, 5))
def test_same_padding_matches_lax(size, f, s):
    want = tuple(lax.padtype_to_pads((size,), (f,), (s,), "SAME")[0])
    assert _args.same_padding(size, f, s) == want
    assert _args.output_size(size, f, s, _args.same_padding(size, f, s)) == -(-size // s)


def test_seed_003_sizes():
    # 7x7 input, 3x3 filter: stride 1 -> 5x5, stride 2 -> 3x3, stride 3 leaves a remainder.
    assert _args.output_size(7, 3, 1, (0, 0)) == 5
    assert _args.output_size(7, 3, 2, (0, 0)) == 3
    assert _args.remainder(7, 3, 3, (0, 0)) == 1
    # 32x32 input, 5x5 filter, stride 1, pad 2 -> 32 (AlexNet-style "same" sizes)
    assert _args.output_size(32, 5, 1, (2, 2)) == 32
    # AlexNet CONV1: 227, 11x11, stride 4 -> 55
    assert _args.output_size(227, 11, 4, (0, 0)) == 55


@pytest.mark.parametrize("padding,want", [
    (1, ((1, 1), (1, 1))),
    ((1, 2), ((1, 1), (2, 2))),
    (((0, 1), (2, 3)), ((0, 1), (2, 3))),
    ("valid", ((0, 0), (0, 0))),
    ("SAME", ((1, 1), (1, 1))),
])
def test_padding_forms(padding, want):
    assert _args.as_padding(padding, "op", (8, 8), (3, 3), (1, 1)) == want


def test_bool_is_not_an_int():
    with pytest.raises(TypeError, match="op: `stride` must be an int, got bool"):
        _args.as_pair(True, "op", "stride")


@pytest.mark.parametrize("padding,want", [
    (np.array([1, 2]), ((1, 1), (2, 2))),
    (np.array([[0, 1], [2, 3]]), ((0, 1), (2, 3))),
    ((np.array([0, 1]), [2, np.int64(3)]), ((0, 1), (2, 3))),
    (np.int32(2), ((2, 2), (2, 2))),
    (np.array(2), ((2, 2), (2, 2))),
    (jnp.array([1, 2]), ((1, 1), (2, 2))),
])
def test_numpy_padding_forms(padding, want):
    """Before: "op: `padding` must be an int, got ndarray array([1, 2])"."""
    assert _args.as_padding(padding, "op", (8, 8), (3, 3), (1, 1)) == want


@pytest.mark.parametrize("padding,exc,pattern", [
    (1.5, TypeError, r"^op: `padding` must be an int, a pair \(ph, pw\), \(\(top, bottom\), "
                     r"\(left, right\)\), 'SAME' or 'VALID', got float 1.5\.$"),
    (np.array([[1, 1, 1], [0, 0, 0]]), ValueError, r"^op: `padding` must be an int or a pair"),
    (((1, 1), 2), ValueError, r"^op: `padding` must be an int, a pair .*got \(\(1, 1\), 2\)\.$"),
    (np.array([1, 2, 3]), ValueError, r"^op: `padding` must be an int, a pair .*got \(1, 2, 3\)"),
    ({"h": 1}, TypeError, r"^op: `padding` must be an int, a pair .*got dict"),
])
def test_bad_padding_names_the_accepted_forms(padding, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _args.as_padding(padding, "op", (8, 8), (3, 3), (1, 1))


def test_pairs_ints_and_shapes_take_numpy():
    assert _args.as_pair(np.array([2, 3]), "op", "stride") == (2, 3)
    assert _args.as_pair(np.int64(2), "op", "stride") == (2, 2)
    assert type(_args.as_pair(np.array([2, 3]), "op", "stride")[0]) is int
    assert _args.as_int(np.int16(3), "op", "groups", minimum=1) == 3
    assert _args.as_shape(np.array([2, 8, 8, 3]), "op", "shape", 4) == (2, 8, 8, 3)
    assert _args.as_shape(jnp.zeros((2, 5)).shape, "op", "shape") == (2, 5)
    assert _args.as_shape([0, 8], "op", "shape", minimum=(0, 1)) == (0, 8)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: _args.as_int((2, 3), "conv2d", "groups", minimum=1), TypeError,
     r"^conv2d: `groups` must be an int >= 1, got tuple \(2, 3\)\.$"),
    (lambda: _args.as_int(0, "conv2d", "groups", minimum=1), ValueError,
     r"^conv2d: `groups` must be an int >= 1, got 0\.$"),
    (lambda: _args.as_int(np.bool_(True), "op", "n"), TypeError,
     r"^op: `n` must be an int, got bool"),
    (lambda: _args.as_pair(np.array([1.5, 2.0]), "op", "stride"), TypeError,
     r"^op: `stride` must be an int, got float 1.5\.$"),
    (lambda: _args.as_shape(((2, 2), 8, 8, 3), "op", "input_shape", 4, minimum=(0, 1, 1, 1)),
     TypeError, r"^op: `input_shape\[0\]` must be an int >= 0, got tuple \(2, 2\)\.$"),
    (lambda: _args.as_shape((8, 8, 3), "op", "input_shape", 4), ValueError,
     r"^op: `input_shape` must be a tuple of 4 ints, got \(8, 8, 3\)\.$"),
    (lambda: _args.as_float("x", "op", "rate", minimum=0, below=1, note="the drop probability"),
     TypeError,
     r"^op: `rate` \(the drop probability\) must be a float in \[0, 1\), got str 'x'\.$"),
    (lambda: _args.as_float(1, "op", "rate", minimum=0, below=1), ValueError,
     r"^op: `rate` must be a float in \[0, 1\), got 1\.$"),
    (lambda: _args.as_float(0.0, "op", "k", above=0), ValueError,
     r"^op: `k` must be a float > 0, got 0.0\.$"),
    (lambda: _args.as_float(float("-inf"), "op", "alpha", minimum=0), ValueError,
     r"^op: `alpha` must be a finite float >= 0, got -inf\.$"),
    (lambda: _args.as_float(10**400, "op", "alpha"), ValueError,
     r"^op: `alpha` must be a finite float, got 1000"),
    (lambda: _args.as_float(np.array([0.5]), "op", "alpha"), TypeError,
     r"^op: `alpha` must be a float, got tuple \(0.5,\)\.$"),
])
def test_one_function_per_kind_one_message_shape(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_floats_take_numpy_and_give_python_floats():
    for v in (np.float32(0.5), np.float64(0.5), np.array(0.5), 0.5, jnp.array(0.5)):
        got = _args.as_float(v, "op", "rate", minimum=0, below=1)
        assert got == 0.5 and type(got) is float
    assert type(_args.as_float(2, "op", "k")) is float


def test_traced_values_are_refused_by_name():
    def f(v):
        _args.as_pair(v, "conv2d", "stride")

    with pytest.raises(TypeError, match=r"^conv2d: `stride` must be an int or a pair \(h, w\) "
                                        r"known at trace time, got a traced array"):
        jax.jit(f)(np.array([1, 2]))


def test_pool_windows_are_not_said_to_be_dilated():
    with pytest.raises(ValueError, match=r"^pool: the window \(9\) is larger"):
        _args.check_fits("pool", (8, 8), (9, 9), ((0, 0), (0, 0)), dilated=False)
    with pytest.raises(ValueError, match=r"^conv: the kernel \(9 with dilation\) is larger"):
        _args.check_fits("conv", (8, 8), (9, 9), ((0, 0), (0, 0)), "kernel")


def test_args_does_not_import_jax():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(_args))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"jax", "jaxlib", "numpy"}, imported
