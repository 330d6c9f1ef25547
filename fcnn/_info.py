"""`fcnn.info()`: what this process runs, in one call.

    >>> print(fcnn.info())
    fcnn 0.1.0 on jax 0.10.2 / jaxlib 0.10.2, Python 3.11.2, default backend cpu
    cpu: Intel(R) Xeon(R) ... (2 cores; avx2 avx512f ...)
    native kernels: yes: .../fcnn/_native/libfcnn_onednn.so (jaxlib 0.10.2, oneDNN 3.2.0)
    algorithms ("auto"): measured on this machine, kept in ~/.cache/fcnn/conv-tuning (14 choices)
    binding: primitive (hand-written JVP, transpose and batching rules)
    memory: freed memory kept for reuse, CPU programs run on the calling thread (FCNN_MALLOC=keep)

Each line is also a field of the returned `Info`, for scripts and bug reports.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform


@dataclasses.dataclass(frozen=True)
class Info:
    """What runs: versions, the CPU, whether the native kernels are loaded (and why not), where
    "auto"'s algorithm choices come from, the binding carrying the rules, the allocator."""

    fcnn: str
    jax: str
    jaxlib: str
    python: str
    backend: str
    cpu: str
    cores: int
    isa: tuple[str, ...]
    native: bool
    native_detail: str  # the library and what it was built against, or why there is none
    tuning_mode: str  # "measure", "cached" or "table" (fcnn.tuning)
    tuning_cache: str  # the folder of recorded choices
    tuning_entries: int  # choices recorded there (any machine)
    binding: str
    memory: str | None  # fcnn.memory.mode(), "+inline" with fcnn.memory.inline_dispatch()

    def __str__(self) -> str:
        native = f"yes: {self.native_detail}" if self.native else f"no: {self.native_detail}"
        sources = {
            "measure": f"measured on this machine, kept in {self.tuning_cache} "
                       f"({self.tuning_entries} choices recorded)",
            "cached": f"recorded in {self.tuning_cache} ({self.tuning_entries} choices), "
                      f"else the built-in table; never measured (FCNN_CONV_TUNING=cached)",
            "table": "the built-in table (FCNN_CONV_TUNING=table)",
        }
        rules = ("hand-written JVP, transpose and batching rules" if self.binding == "primitive"
                 else "custom_vjp: reverse mode only")
        memory = {"keep": "freed memory kept for reuse (FCNN_MALLOC=keep)",
                  "keep+inline": "freed memory kept for reuse, CPU programs run on the calling "
                                 "thread (FCNN_MALLOC=keep)"}.get(self.memory,
                                                                 "the C library's defaults")
        return "\n".join([
            f"fcnn {self.fcnn} on jax {self.jax} / jaxlib {self.jaxlib}, Python {self.python}, "
            f"default backend {self.backend}",
            f"cpu: {self.cpu} ({self.cores} cores; {' '.join(self.isa) or 'no listed ISA'})",
            f"native kernels: {native}",
            f'algorithms ("auto"): {sources[self.tuning_mode]}',
            f"binding: {self.binding} ({rules})",
            f"memory: {memory}",
        ])

    def line(self) -> str:
        """One line for a script's log: the native kernels, the algorithms' source, the
        binding."""
        native = "yes" if self.native else "no (fcnn.info() says why)"
        return (f"fcnn {self.fcnn} on {self.backend}: native kernels {native}, algorithms "
                f"{_SOURCE[self.tuning_mode]}, {self.binding} binding")


_SOURCE = {"measure": "measured", "cached": "cached or tabled", "table": "tabled"}


def info() -> Info:
    """What this process runs: see `Info` (print it for a readable summary)."""
    import jax

    from fcnn import memory
    from fcnn.ops import _binding, onednn, tuning

    m = tuning.machine()
    if onednn.AVAILABLE:
        b = onednn.BUILD
        detail = (f"{onednn.LIBRARY} (built for jaxlib {b['jaxlib']}, oneDNN "
                  f"{'.'.join(map(str, b['onednn_loaded']))} from {b['libdnnl']})")
    else:
        detail = onednn.WHY_NOT
    try:
        version = importlib.metadata.version("fcnn")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        version = "(not installed)"
    return Info(fcnn=version, jax=m["jax"], jaxlib=m["jaxlib"],
                python=platform.python_version(), backend=jax.default_backend(), cpu=m["cpu"],
                cores=m["cores"], isa=tuple(m["isa"]), native=onednn.AVAILABLE,
                native_detail=detail, tuning_mode=tuning.mode(),
                tuning_cache=str(tuning.cache_dir()), tuning_entries=len(tuning.entries()),
                binding=_binding.binding(),
                memory=(memory.mode() or "") + ("+inline" if memory.inline_dispatch() else ""))
