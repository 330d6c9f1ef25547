"""Hypothesis strategies for convolution and pooling configurations, and array helpers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from fcnn import _args


def normal(seed, shape, dtype=jnp.float64):
    """Standard normal values from numpy (no XLA compilation per shape, unlike jax.random)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def distinct(seed, shape, dtype=jnp.float64):
    """Values with no ties (a random permutation), for max-pool gradients."""
    n = int(np.prod(shape))
    perm = np.random.default_rng(seed).permutation(n).astype(np.float64)
    return jnp.asarray((perm / n - 0.5).reshape(shape), dtype)


@st.composite
def paddings(draw, max_pad=2):
    """A user-form padding and the explicit pads it means (None for 'SAME')."""
    kind = draw(st.sampled_from(["int", "pair", "explicit", "SAME", "VALID"]))
    if kind == "int":
        p = draw(st.integers(0, max_pad))
        return p, ((p, p), (p, p))
    if kind == "pair":
        ph, pw = draw(st.integers(0, max_pad)), draw(st.integers(0, max_pad))
        return (ph, pw), ((ph, ph), (pw, pw))
    if kind == "explicit":
        top, bottom, left, right = (draw(st.integers(0, max_pad)) for _ in range(4))
        pads = ((top, bottom), (left, right))
        return pads, pads
    return kind, (None if kind == "SAME" else ((0, 0), (0, 0)))


def _int_or_pair(draw, pair):
    if pair[0] == pair[1] and draw(st.booleans()):
        return pair[0]
    return pair


@st.composite
def conv_cases(draw, max_kernel=4, max_stride=3, max_dilation=2, max_extra=4):
    """A dict describing one convolution: shapes, configuration, batched or not, bias or not."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    s = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    d = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    padding, pads = draw(paddings())
    hw = []
    for axis in range(2):
        f = _args.effective_window(k[axis], d[axis])
        lo = 1 if pads is None else max(1, f - sum(pads[axis]))
        hw.append(draw(st.integers(lo, lo + max_extra)))
    n = draw(st.integers(1, 2))
    batched = draw(st.booleans())
    return dict(
        x_shape=(n, *hw, cin) if batched else (*hw, cin),
        w_shape=(*k, cin // groups, cout),
        bias=draw(st.booleans()),
        kwargs=dict(
            stride=_int_or_pair(draw, s),
            padding=padding,
            dilation=_int_or_pair(draw, d),
            groups=groups,
        ),
    )


@st.composite
def pool_cases(draw, max_window=3, max_stride=3, max_extra=4):
    """A dict describing one pooling: shape, window, stride (None = window), padding."""
    window = (draw(st.integers(1, max_window)), draw(st.integers(1, max_window)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, max_stride),
                                                 st.integers(1, max_stride))))
    padding, pads = draw(paddings(max_pad=max_window - 1))
    if pads is not None and any(max(p) >= k for p, k in zip(pads, window)):
        padding, pads = 0, ((0, 0), (0, 0))
    hw = []
    for axis in range(2):
        lo = 1 if pads is None else max(1, window[axis] - sum(pads[axis]))
        hw.append(draw(st.integers(lo, lo + max_extra)))
    c = draw(st.integers(1, 3))
    batched = draw(st.booleans())
    shape = (draw(st.integers(1, 2)), *hw, c) if batched else (*hw, c)
    return dict(
        shape=shape,
        window=_int_or_pair(draw, window),
        stride=stride if stride is None else _int_or_pair(draw, stride),
        padding=padding,
    )
