"""The pure-integer shape and padding arithmetic, against lax's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
