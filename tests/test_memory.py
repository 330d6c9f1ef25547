"""fcnn.memory: glibc keeps the large blocks XLA frees every run, so no run page-faults them back.

The property measured is the kernel's own count of minor page faults (getrusage) over repeated
runs of a program whose 48 MiB output is allocated anew each time, in a fresh process per mode
(kept, the heap reaches its steady state within a few runs: 12,288 faults each before).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from fcnn import memory

GLIBC = memory._libc() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the C library is not glibc")

PROBE = textwrap.dedent("""
    import resource, sys
    import jax, jax.numpy as jnp
    import fcnn
    f = jax.jit(lambda x: x + 1.0)
    x = jnp.zeros((int(sys.argv[1]) << 20,), jnp.float32)  # 48 MiB: above glibc's mmap
                                                       # threshold (32 MiB at most), within an
                                                       # arena (64); 96 MiB: above an arena
    faults = []
    for _ in range(18):                                # each output freed before the next
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(fcnn.memory.mode(), fcnn.memory.inline_dispatch(),
          sorted(faults[8:])[5])                       # the median run after 8 of warm-up
""")


def _probe(mode, mib=12, **env):
    env = {**os.environ, "FCNN_MALLOC": mode, "JAX_PLATFORMS": "cpu", **env}
    env = {k: v for k, v in env.items() if v is not None}
    out = subprocess.run([sys.executable, "-c", PROBE, str(mib)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, inline, faults = out.stdout.split()
    return applied, inline == "True", float(faults)


@needs_glibc
def test_kept_memory_is_reused_without_page_faults():
    applied, _, kept = _probe("keep")
    assert applied == "keep"
    # 48 MiB in 4 KiB pages is 12,288 faults per run when the block comes back from the kernel
    # (with transparent huge pages, 24); reused, none. Measured (median run): 12,288 under
    # glibc's defaults, 0 kept (2-core Intel Xeon, glibc 2.36).
    assert kept < 8, f"{kept} page faults per run with freed memory kept"
    applied, inline, system = _probe("system")
    assert applied == "None" and not inline
    assert system >= 16, f"only {system} page faults per run under glibc's defaults: the probe " \
                         f"no longer shows what fcnn.memory is for"


@needs_glibc
def test_blocks_above_an_arena_are_reused_when_programs_run_on_the_calling_thread():
    """A 96 MiB block: JAX's own dispatch thread would get it from `mmap` every run (glibc's
    arenas of other threads hold at most 64 MiB), 24,576 faults; `import fcnn` runs CPU
    programs on the calling thread, whose heap keeps it: none. A user's own JAX setting is
    left alone (and the faults come back). Measured (median run): 0 and 24,577."""
    applied, inline, faults = _probe("keep", 24, JAX_CPU_ENABLE_ASYNC_DISPATCH=None)
    assert applied == "keep" and inline
    assert faults < 8, f"{faults} page faults per run of a 96 MiB block"
    applied, inline, faults = _probe("keep", 24, JAX_CPU_ENABLE_ASYNC_DISPATCH="1")
    assert applied == "keep" and not inline
    assert faults >= 16, f"only {faults} page faults per run with JAX's dispatch thread: the " \
                         f"probe no longer shows why fcnn runs programs inline"


@needs_glibc
def test_import_applies_it_by_default():
    if os.environ.get("FCNN_MALLOC", "keep") == "keep":
        assert memory.mode() == "keep"


def test_bad_environment_value_is_refused_at_import():
    env = {**os.environ, "FCNN_MALLOC": "jemalloc"}
    out = subprocess.run([sys.executable, "-c", "import fcnn"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "FCNN_MALLOC must be one of keep, system, got 'jemalloc'." in out.stderr


@pytest.mark.parametrize("bad", [0, -1, 2 ** 31, 1.5, True, "1"])
def test_bad_trim_threshold(bad):
    with pytest.raises(ValueError, match=r"keep_freed_memory: `trim_threshold` must be an int"):
        memory.keep_freed_memory(bad)
