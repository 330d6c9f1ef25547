"""The timing harness of every benchmark here: interleaved samples, medians.

A thing to time is a `Timed`: `call()` runs it once on fixed inputs and `sync(out)` waits for
its result (JAX dispatches asynchronously: a loop of calls that never waits times only the
dispatch). `interleaved` then, for each runner in turn:

1. warms it up: `warmup` calls, untimed (caches, allocators and thread pools fill; a JAX program
   is compiled before that, by `jax_timed`, so compilation is never timed);
2. calibrates it: `probe` back-to-back calls timed give `inner = max(1, int(target / t_call))`
   calls per sample, so every sample lasts about `target` seconds and neither the clock's
   resolution nor dispatch jitter dominates a short call;

and then takes `repeats` rounds, each one sample of every runner, round-robin, every other round
in reverse order: drift of the machine (frequency scaling, heat, other processes) hits every
runner alike, and no runner always follows the same neighbour. Between two runners' samples the
harness sleeps `pause` seconds: PyTorch's OpenMP threads spin for a while after each op
(libgomp's spin count, Intel OpenMP's 200 ms block time) and would slow whatever ran next.
A sample is seconds per call:
the wall time of `inner` back-to-back calls, the last result waited for, over `inner`.

`medians` summarises each runner; `pair_ratio` is the median over rounds of one runner's sample
over another's, taken side by side in the same round, so drift common to a round cancels.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Samples = dict[str, list[float]]  # runner label -> seconds per call, one entry per round


@dataclass
class Timed:
    """One thing to time: `call()` once on fixed inputs; `sync(out)` waits for its result.
    `compiled` is the JAX program when there is one (its memory, its optimised HLO)."""

    label: str
    call: Callable[[], Any]
    sync: Callable[[Any], Any] = jax.block_until_ready
    compiled: Any = None

    def sample(self, n: int, clock: Callable[[], float] = time.perf_counter) -> float:
        """Seconds per call over `n` back-to-back calls, the last one's result waited for."""
        t = clock()
        for _ in range(n):
            out = self.call()
        self.sync(out)
        return (clock() - t) / n


def jax_timed(label: str, fn: Callable, args: Sequence) -> Timed:
    """`fn(*args)` jitted and compiled ahead of time, its results blocked on."""
    compiled = jax.jit(fn).lower(*args).compile()
    return Timed(label, functools.partial(compiled, *args), compiled=compiled)


def interleaved(runners: Sequence[Timed], repeats: int, target: float = 0.25, *,
                warmup: int = 2, probe: int = 2, pause: float = 0.25,
                clock: Callable[[], float] = time.perf_counter) -> Samples:
    """`repeats` round-robin samples of every runner, each of about `target` seconds (see the
    module docstring); returns every sample, by label."""
    labels = [r.label for r in runners]
    if len(set(labels)) != len(labels):
        raise ValueError(f"interleaved: runner labels must be distinct, got {labels}.")
    if min(warmup, probe, repeats) < 1:
        raise ValueError("interleaved: warmup, probe and repeats must be >= 1, got "
                         f"{warmup}, {probe}, {repeats}.")
    for r in runners:
        r.sample(warmup, clock)
    inner = {r.label: max(1, int(target / max(r.sample(probe, clock), 1e-9))) for r in runners}
    samples: Samples = {label: [] for label in labels}
    for i in range(repeats):
        for r in runners if i % 2 == 0 else runners[::-1]:
            if len(runners) > 1:
                time.sleep(pause)
            samples[r.label].append(r.sample(inner[r.label], clock))
    return samples


def medians(samples: Samples) -> dict[str, float]:
    """Each runner's median seconds per call."""
    return {label: statistics.median(s) for label, s in samples.items()}


def pair_ratio(samples: Samples, num: str, den: str) -> float:
    """Median over rounds of `num`'s sample / `den`'s sample of the same round."""
    return statistics.median(a / b for a, b in zip(samples[num], samples[den], strict=True))


def matmul_peak(repeats=10, n=2048):
    """f32 GFLOP/s of one jitted n x n matmul: the practical peak XLA reaches on this machine."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    runner = jax_timed("matmul", jnp.matmul, (a, a))
    t = medians(interleaved([runner], repeats, warmup=1, probe=1))["matmul"]
    return 2 * n ** 3 / t / 1e9
