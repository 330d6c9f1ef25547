"""The hypothesis sweeps reach the cases that break hand derivations, and follow the profile."""

from __future__ import annotations

import os
import pathlib
import re

import pytest
from hypothesis import given, settings

from fcnn.ops.convolution.algorithms import TAPS_BROADCAST_MAX
from tests.strategies import conv_cases, costly, pool_cases

TESTS = pathlib.Path(__file__).parent


def _draws(strategy, n):
    """The first `n` cases a test drawing from `strategy` sees under the ci profile (derandomized;
    each test function has its own seed, so these are one such sequence)."""
    seen = []

    @settings(settings.get_profile("ci"), max_examples=n, database=None)
    @given(strategy)
    def collect(case):
        seen.append(case)

    collect()
    return seen


def _pair(v, rank=2):
    return (v,) * rank if isinstance(v, int) else tuple(v)


def _asymmetric(padding):
    return not isinstance(padding, (str, int)) and not isinstance(padding[0], int) and any(
        lo != hi for lo, hi in padding)


def _explicit(padding, rank=2):
    """Explicit pads of a non-"SAME" padding."""
    if padding == "VALID":
        return ((0, 0),) * rank
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    if isinstance(padding[0], int):
        return tuple((p, p) for p in padding)
    return padding


def _conv_features(case):
    kw, x_shape, rank = case["kwargs"], case["x_shape"], case["rank"]
    k, cig = case["w_shape"][:-2], case["w_shape"][-2]
    stride, dilation = _pair(kw["stride"], rank), _pair(kw["dilation"], rank)
    padding = kw["padding"]
    remainder = padding != "SAME" and any(  # what the forward's floor drops
        (n + lo + hi - (k_ - 1) * d - 1) % s
        for n, k_, d, s, (lo, hi) in zip(x_shape[-rank - 1:-1], k, dilation, stride,
                                         _explicit(padding, rank), strict=True))
    batched = len(x_shape) == rank + 2
    return {
        "1-D": rank == 1,
        "3-D": rank == 3,
        "3-D with stride 2 or 3": rank == 3 and max(stride) > 1,
        "batch >= 2": batched and x_shape[0] >= 2,
        "batch 3": batched and x_shape[0] == 3,
        "unbatched": not batched,
        "asymmetric padding": _asymmetric(padding),
        "SAME": padding == "SAME",
        "C_in/groups > 2": cig > 2,
        "C_in/groups > 2 with groups > 1": cig > 2 and kw["groups"] > 1,
        "C_in/groups past the taps broadcast limit": cig > TAPS_BROADCAST_MAX,
        "stride 3": 3 in stride,
        "dilation 3": 3 in dilation,
        "remainder r != 0": remainder,
        "bias": case["bias"],
        "relu": case["activation"] == "relu",
        "relu without a bias": case["activation"] == "relu" and not case["bias"],
    }


def _pool_features(case):
    rank = case["rank"]
    shape, window = case["shape"], _pair(case["window"], rank)
    tiles = case["stride"] is None or _pair(case["stride"], rank) == window
    return {
        "1-D": rank == 1,
        "3-D": rank == 3,
        "batch >= 2": len(shape) == rank + 2 and shape[0] >= 2,
        "unbatched": len(shape) == rank + 1,
        "asymmetric padding": _asymmetric(case["padding"]),
        "channels > 3": shape[-1] > 3,
        "channels >= 8": shape[-1] >= 8,
        "tiled max-pool backward (stride == window, 32+ channels)":
            tiles and shape[-1] >= 32 and rank == 2,
        "overlapping windows": any(s < k for s, k in zip(_pair(case["stride"] or window, rank),
                                                          window, strict=True)),
    }


def _counts(cases, features):
    """How many of `cases` show each feature."""
    seen = [features(c) for c in cases]
    return {name: sum(s[name] for s in seen) for name in seen[0]}


# Every feature above shows in 200 draws. Hypothesis's draws move with its version (a new
# release is a new effective seed), so the assertion must hold for any seed: measured over
# seeds 0-19 (`@seed(s)`, derandomize off, 200 draws), the rarest feature showed 3-26 times for
# conv and 12-42 for pool; the first 20 draws alone missed one of the hard cases for 3 of 40
# conv seeds and 12 of 40 pool seeds, so no smaller sample is pinned.
@pytest.mark.parametrize("name,strategy,features", [
    ("conv", conv_cases(), _conv_features), ("pool", pool_cases(), _pool_features)])
def test_sweep_reaches_the_hard_cases(name, strategy, features):
    counts = _counts(_draws(strategy, 200), features)
    assert min(counts.values()) >= 1, counts


def test_costly_sweeps_follow_the_profile():
    try:
        settings.load_profile("thorough")
        assert costly(ci_examples=10).max_examples == 300
        settings.load_profile("ci")
        ci = settings.get_profile("ci").max_examples
        assert costly(ci_examples=ci - 3).max_examples == ci - 3
        assert costly(ci_examples=50).max_examples == ci  # never more than the profile asks
    finally:
        settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def test_no_sweep_fixes_its_own_example_count():
    """A literal `max_examples` in a test would override the profile (thorough included):
    counts live in conftest.py's profiles and strategies.costly only."""
    pattern = re.compile(r"max_examples\s*=")
    offenders = [
        f"{path.name}:{i}"
        for path in sorted(TESTS.glob("test_*.py")) if path.name != pathlib.Path(__file__).name
        for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)
    ]
    assert not offenders, offenders
