"""The "onednn" convolution algorithm: oneDNN's kernels through the XLA FFI (native/).

fcnn's rules decide what each map is; oneDNN computes it, on the CPU, in float32:

    forward  y  = conv(x, w)      oneDNN convolution_forward on fcnn's own NHWC/HWIO buffers
    dX       dX = conv_dx(g, w)   convolution_backward_data: the full convolution of g with the
                                  flipped kernel
    dK       dK = conv_dk(x, g)   convolution_backward_weights: the cross-correlation of x
                                  with g

Each is a `jax.ffi.ffi_call` of a handler in `fcnn/_native/libfcnn_onednn.so`, built by
`python native/build.py` (optional: without it fcnn runs as before and "onednn" is not among
the algorithms). The forward runs on the plain layouts (oneDNN's NHWC kernels need no
reorder); dX and dK let oneDNN pick its blocked layouts and reorder into them, measured faster
(docs/performance.md). A program holding these calls names them as custom calls
(`fcnn_onednn_conv_fwd`, `_dx`, `_dk`): `jax.export` needs `disabled_checks=export_checks()`
for it, and a process runs the artifact after `import fcnn` on a machine with the library
built.

Threads: oneDNN's GNU OpenMP build runs each call on a team of OpenMP threads (one per core) on
the XLA thread that calls it, while XLA's own pool waits. OpenMP workers that spin-wait stall
every barrier when another process takes a core (one dX measured 1.3 s instead of 12 ms), so
the library is loaded with `OMP_WAIT_POLICY=PASSIVE` unless the environment sets a policy
(libgomp reads it once, when it loads; the variable is restored afterwards).
`FCNN_ONEDNN=0` leaves the library unloaded.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

LIBRARY = Path(__file__).resolve().parents[1] / "_native" / "libfcnn_onednn.so"
TARGETS = {"forward": "fcnn_onednn_conv_fwd", "dx": "fcnn_onednn_conv_dx",
           "dk": "fcnn_onednn_conv_dk"}
_SYMBOLS = {"forward": "OnednnConvFwd", "dx": "OnednnConvBwdData", "dk": "OnednnConvBwdWeights"}


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libgomp" in f.read()
    except OSError:
        return False


def _load():
    """(library, "") once loaded and registered, or (None, why not)."""
    if os.environ.get("FCNN_ONEDNN", "1") == "0":
        return None, "FCNN_ONEDNN=0 in the environment"
    if not LIBRARY.exists():
        return None, (f"the native part is not built ({LIBRARY} is missing): pip install "
                      f"'.[native]' && python native/build.py")
    set_policy = "OMP_WAIT_POLICY" not in os.environ and not _libgomp_loaded()
    if set_policy:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as e:
        return None, f"{LIBRARY} did not load: {e}"
    finally:
        if set_policy:
            del os.environ["OMP_WAIT_POLICY"]
    import jax

    for name, symbol in _SYMBOLS.items():
        jax.ffi.register_ffi_target(TARGETS[name], jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    lib.OnednnConvImplInfo.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.OnednnConvImplInfo.restype = ctypes.c_int
    return lib, ""


_lib, WHY_NOT = _load()
AVAILABLE = _lib is not None


def implementations() -> str:
    """oneDNN's kernel for each configuration run so far in this process, one per line (the
    key, the implementation's name, and which operands are reordered)."""
    if _lib is None:
        return ""
    size = _lib.OnednnConvImplInfo(None, 0)
    buf = ctypes.create_string_buffer(size + 1)
    _lib.OnednnConvImplInfo(buf, size + 1)
    return buf.value.decode()


def export_checks():
    """What `jax.export.export(fn, disabled_checks=...)` needs for a program that runs "onednn":
    JAX refuses custom calls it cannot vouch for; these are fcnn's own (the artifact runs where
    fcnn's library is built and imported)."""
    import jax

    return [jax.export.DisabledSafetyCheck.custom_call(t) for t in TARGETS.values()]


def _call(which, out_shape, a, b, cfg, layout_any):
    import jax

    (top, bottom), (left, right) = cfg.padding
    return jax.ffi.ffi_call(
        TARGETS[which], jax.ShapeDtypeStruct(tuple(out_shape), a.dtype),
        # under vmap (a batch of problems) one call per problem
        vmap_method="sequential",
    )(a, b, window_strides=np.asarray(cfg.stride, np.int64),
      padding=np.asarray([top, bottom, left, right], np.int64),
      rhs_dilation=np.asarray(cfg.dilation, np.int64),
      feature_group_count=np.int64(cfg.groups), layout_any=np.int64(layout_any))


def forward(x, w, out_hw, cfg):
    return _call("forward", (x.shape[0], *out_hw, w.shape[3]), x, w, cfg, 0)


def grad_input(g, w, in_hw, cfg):
    return _call("dx", (g.shape[0], *in_hw, w.shape[2] * cfg.groups), g, w, cfg, 1)


def grad_kernel(x, g, k_hw, cfg):
    return _call("dk", (*k_hw, x.shape[3] // cfg.groups, g.shape[3]), x, g, cfg, 1)
