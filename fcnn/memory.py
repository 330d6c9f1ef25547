"""How the process's C allocator treats the large blocks XLA:CPU frees every step.

XLA:CPU allocates a compiled program's temporary buffers and outputs with `malloc` on every run
and frees them after it. glibc's `malloc` serves blocks above its mmap threshold (at most 32
MiB) with a fresh `mmap` and hands them back to the kernel on `free`, and trims the top of its
heap the same way, so the next run touches new pages and the kernel zero-fills each one: a
CIFAR train step at batch 128 (62 MB of temporaries) took 15,900 page faults and 22-31 ms of
kernel time per step of ~95 ms (docs/performance.md, "The allocator").

`keep_freed_memory()` asks glibc to keep freed memory for reuse instead: no `mmap` for large
blocks (they come from the heap, where freed blocks are reused) and the heap's top trimmed only
past `trim_threshold` bytes of free space. The cost is resident memory: the process keeps what
it freed, up to its peak use plus `trim_threshold`, rather than returning it at once.

A block over 64 MiB allocated on another thread than the main one is not covered by the heap:
glibc gives each other thread an arena of at most 64 MiB and serves a larger block with `mmap`
whatever the settings. JAX runs a CPU program on a thread of its own by default (asynchronous
dispatch), and a program's temporaries are allocated there: ResNet-20's train step at batch 128
took 48,700 page faults and 81 ms of kernel time per 189 ms step. So `import fcnn` also runs
CPU programs on the calling thread (`jax_cpu_enable_async_dispatch` False, read when JAX
creates its CPU client: import fcnn before running anything), whose blocks come from the main
heap: 0 faults, 134 ms per step; the main job takes the same time either way (14.2 and 14.3 s).
One arena for all threads (`M_ARENA_MAX` 1) would cover it too, but measured, the lock the
threads then share made the main job 1.18-1.3x slower, so it is not set. A JAX setting of the
user's (`JAX_CPU_ENABLE_ASYNC_DISPATCH` in the environment) is left alone.

`import fcnn` applies both on Linux with glibc unless `FCNN_MALLOC=system` is set in the
environment (glibc's and JAX's defaults left alone); elsewhere (macOS, musl, Windows) nothing
is done.
It is process-wide: every library in the process (PyTorch, NumPy) allocates under it too.
"""

from __future__ import annotations

import ctypes
import os

# mallopt's parameters (glibc's <malloc.h>)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
TRIM_THRESHOLD = 1 << 30  # free bytes at the heap's top before glibc gives them back
TOP_PAD = 256 << 20  # extra address space each heap growth reserves (untouched: not resident)
MODES = ("keep", "system")

_applied: str | None = None
_inline = False  # whether import fcnn turned JAX's asynchronous CPU dispatch off


def _libc():
    """glibc's handle, or None where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError, TypeError):  # no C library handle, or not glibc's
        return None
    version.restype = ctypes.c_char_p
    return libc if version() and hasattr(libc, "mallopt") else None


def keep_freed_memory(trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse (see the module's doc): no mmap for
    large blocks, the heap's top trimmed past `trim_threshold` free bytes. Returns whether it
    took effect (False where the C library is not glibc)."""
    global _applied
    if not isinstance(trim_threshold, int) or isinstance(trim_threshold, bool) or not (
            0 < trim_threshold < 2 ** 31):
        raise ValueError(f"keep_freed_memory: `trim_threshold` must be an int in [1, 2**31), "
                         f"got {trim_threshold!r}.")
    libc = _libc()
    if libc is None:
        return False
    ok = all(libc.mallopt(p, v) == 1 for p, v in (
        (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, trim_threshold), (M_TOP_PAD, TOP_PAD)))
    _applied = "keep" if ok else None
    return ok


def inline_dispatch() -> bool:
    """Whether `import fcnn` set JAX to run CPU programs on the calling thread (see the
    module's doc)."""
    return _inline


def mode() -> str | None:
    """The setting in force: "keep" once `keep_freed_memory` took effect in this process, else
    None (glibc's defaults, or not glibc)."""
    return _applied


def _from_environment() -> None:
    """`import fcnn`'s step: keep freed memory unless FCNN_MALLOC=system."""
    value = os.environ.get("FCNN_MALLOC", "keep")
    if value not in MODES:
        raise ValueError(f"FCNN_MALLOC must be one of {', '.join(MODES)}, got {value!r}.")
    if value == "keep" and keep_freed_memory():
        _run_inline()


def _run_inline() -> None:
    """JAX's CPU programs on the calling thread, unless the user chose (see the module's doc)."""
    global _inline
    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" in os.environ:
        return
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    _inline = True
