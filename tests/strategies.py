"""Hypothesis strategies for convolution and pooling configurations, and array helpers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from fcnn import _args
from fcnn.ops.convolution.algorithms import TAPS_BROADCAST_MAX


def normal(seed, shape, dtype=jnp.float64):
    """Standard normal values from numpy (no XLA compilation per shape, unlike jax.random)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def dtype_for(algorithm):
    """The dtype a sweep proves `algorithm` in: float64, except oneDNN's kernels, which compute
    float32 only (in float64 "onednn" would run XLA's convolution and prove nothing of it)."""
    return jnp.float32 if algorithm == "onednn" else jnp.float64


def distinct(seed, shape, dtype=jnp.float64):
    """Values with no ties (a random permutation), for max-pool gradients."""
    n = int(np.prod(shape))
    perm = np.random.default_rng(seed).permutation(n).astype(np.float64)
    return jnp.asarray((perm / n - 0.5).reshape(shape), dtype)


def costly(ci_examples: int) -> settings:
    """Settings for a sweep whose examples each compile several programs (grad of grad):
    `ci_examples` under the ci profile (tests/conftest.py), and the loaded profile's count under
    one that asks for more (HYPOTHESIS_PROFILE=thorough: 300), never more than it asks."""
    loaded = settings.default.max_examples
    if loaded > settings.get_profile("ci").max_examples:
        return settings(max_examples=loaded)
    return settings(max_examples=min(ci_examples, loaded))


@st.composite
def paddings(draw, max_pad=2, rank=2):
    """A user-form padding for `rank` spatial axes and the explicit pads it means (None for
    'SAME'); `max_pad` (int or one per axis) bounds each side. Explicit `((low, high), ...)`,
    mostly asymmetric, comes first: hypothesis draws its first choices most often."""
    maxes = (max_pad,) * rank if isinstance(max_pad, int) else tuple(max_pad)
    kind = draw(st.sampled_from(["explicit", "SAME", "explicit", "int", "pair", "SAME", "VALID"]))
    if kind == "int":
        p = draw(st.integers(0, min(maxes)))
        return p, ((p, p),) * rank
    if kind == "pair":  # one per axis
        per = tuple(draw(st.integers(0, m)) for m in maxes)
        return per, tuple((p, p) for p in per)
    if kind == "explicit":
        pads = tuple((draw(st.integers(0, m)), draw(st.integers(0, m))) for m in maxes)
        return pads, pads
    return kind, (None if kind == "SAME" else ((0, 0),) * rank)


def _int_or_pair(draw, pair):
    """One value per axis, or the int itself when they are all equal (half the time)."""
    if len(set(pair)) == 1 and draw(st.booleans()):
        return pair[0]
    return pair


def _batch(draw, hwc):
    """A batch of 2, 3 or 1, or unbatched: each about a quarter of the time (batches first:
    hypothesis draws the first choices most often)."""
    n = draw(st.sampled_from([2, 3, 1, None]))
    return hwc if n is None else (n, *hwc)


# Channels per group: up to 9, one past the taps forward's broadcast limit. Up to the limit it
# unrolls kh * kw * C_in/groups multiply-adds and its compile time grows with them, so the
# kernel is drawn to keep that at most MAX_TAP_TERMS (big kernels come with few channels); past
# the limit it is one GEMM per tap, whatever the kernel. With 24 the conv sweeps took as long as
# the narrower ones before (173 s both, 2 cores); with 32 they took 207 s.
MAX_CHANNELS_PER_GROUP, MAX_TAP_TERMS = TAPS_BROADCAST_MAX + 1, 24


# The ranks a sweep draws: 2-D most often (the networks' case), 1-D and 3-D as often as each
# other; `max_tap_terms` shrinks 3-D kernels (the taps forward unrolls every tap).
RANKS = (2, 1, 2, 3)


@st.composite
def conv_cases(draw, max_kernel=4, max_stride=3, max_dilation=3, max_extra=4, rank=None):
    """A dict describing one convolution: its rank (drawn from RANKS unless given), shapes,
    configuration, batched or not, bias or not, activation (None or "relu": with a bias or an
    activation the convolution is the fused op)."""
    rank = draw(st.sampled_from(RANKS)) if rank is None else rank
    groups = draw(st.sampled_from([1, 2, 1, 3]))
    cig = draw(st.integers(1, MAX_CHANNELS_PER_GROUP))
    terms = 1 if cig > TAPS_BROADCAST_MAX else cig  # per tap, in the taps forward
    k = []
    for _ in range(rank):  # kernels drawn so that prod(k) * terms <= MAX_TAP_TERMS
        room = MAX_TAP_TERMS // (terms * int(np.prod(k or [1])))
        k.append(draw(st.integers(1, max(1, min(max_kernel, room)))))
    cin, cout = groups * cig, groups * draw(st.integers(1, 3))
    s = tuple(draw(st.integers(1, max_stride)) for _ in range(rank))
    d = tuple(draw(st.integers(1, max_dilation)) for _ in range(rank))
    padding, pads = draw(paddings(rank=rank))
    sizes = []
    for axis in range(rank):
        f = _args.effective_window(k[axis], d[axis])
        lo = 1 if pads is None else max(1, f - sum(pads[axis]))
        sizes.append(draw(st.integers(lo, lo + (max_extra if rank < 3 else 2))))
    return dict(
        rank=rank,
        x_shape=_batch(draw, (*sizes, cin)),
        w_shape=(*k, cig, cout),
        bias=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "relu"])),
        kwargs=dict(
            stride=_int_or_pair(draw, s),
            padding=padding,
            dilation=_int_or_pair(draw, d),
            groups=groups,
        ),
    )


@st.composite
def pool_cases(draw, max_window=3, max_stride=3, max_extra=4, rank=None):
    """A dict describing one pooling: rank (drawn from RANKS unless given), shape, window,
    stride (None = window), padding. Channels 1, 3, 8 or 32 (where max pool's backward with
    stride == window takes its tiled path, in 2-D)."""
    rank = draw(st.sampled_from(RANKS)) if rank is None else rank
    window = tuple(draw(st.integers(1, max_window)) for _ in range(rank))
    stride = draw(st.one_of(st.none(), st.tuples(*[st.integers(1, max_stride)] * rank)))
    padding, pads = draw(paddings(max_pad=tuple(k - 1 for k in window), rank=rank))  # < window
    sizes = []
    for axis in range(rank):
        lo = 1 if pads is None else max(1, window[axis] - sum(pads[axis]))
        sizes.append(draw(st.integers(lo, lo + (max_extra if rank < 3 else 2))))
    c = draw(st.sampled_from([3, 32, 8, 1]))
    return dict(
        rank=rank,
        shape=_batch(draw, (*sizes, c)),
        window=_int_or_pair(draw, window),
        stride=stride if stride is None else _int_or_pair(draw, stride),
        padding=padding,
    )