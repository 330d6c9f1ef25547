"""The "onednn" convolution algorithm: oneDNN's kernels through the XLA FFI (native/).

fcnn's rules decide what each map is; oneDNN computes it, on the CPU, in float32:

    forward  y  = conv(x, w)      oneDNN convolution_forward on fcnn's own NHWC/HWIO buffers
    dX       dX = conv_dx(g, w)   convolution_backward_data: the full convolution of g with the
                                  flipped kernel
    dK       dK = conv_dk(x, g)   convolution_backward_weights: the cross-correlation of x
                                  with g

Each is a `jax.ffi.ffi_call` of a handler in `fcnn/_native/libfcnn_onednn.so`, built by
`python native/build.py` (optional: without it fcnn runs as before and "onednn" is not among
the algorithms). The activations stay in fcnn's NHWC layout (no copy of the large tensors);
the kernel is reordered into the layout oneDNN prefers, a small copy per call (measured fastest,
docs/performance.md). A program holding these calls names them as custom calls
(`fcnn_onednn_conv_fwd`, `_dx`, `_dk`): `jax.export` needs `disabled_checks=export_checks()`
for it, and a process runs the artifact after `import fcnn` on a machine with the library
built.

Threads: each call cuts the batch into one piece per thread of XLA's own pool (the FFI's
thread-pool context), the calling thread taking part, and oneDNN runs single-threaded in each:
no OpenMP team beside XLA's threads (which spin a while after their own work: a oneDNN team
started right after a multi-threaded XLA op lost 0.5 ms of 1.5). dK's pieces are summed.
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


def _load():
    """(library, "") once loaded and registered, or (None, why not)."""
    if os.environ.get("FCNN_ONEDNN", "1") == "0":
        return None, "FCNN_ONEDNN=0 in the environment"
    if not LIBRARY.exists():
        return None, (f"the native part is not built ({LIBRARY} is missing): pip install "
                      f"'.[native]' && python native/build.py")
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as e:
        return None, f"{LIBRARY} did not load: {e}"
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


def _call(which, out_shape, a, b, cfg):
    import jax

    (top, bottom), (left, right) = cfg.padding
    return jax.ffi.ffi_call(
        TARGETS[which], jax.ShapeDtypeStruct(tuple(out_shape), a.dtype),
        # under vmap (a batch of problems) one call per problem
        vmap_method="sequential",
    )(a, b, window_strides=np.asarray(cfg.stride, np.int64),
      padding=np.asarray([top, bottom, left, right], np.int64),
      rhs_dilation=np.asarray(cfg.dilation, np.int64),
      feature_group_count=np.int64(cfg.groups))


def forward(x, w, out_hw, cfg):
    return _call("forward", (x.shape[0], *out_hw, w.shape[3]), x, w, cfg)


def grad_input(g, w, in_hw, cfg):
    return _call("dx", (g.shape[0], *in_hw, w.shape[2] * cfg.groups), g, w, cfg)


def grad_kernel(x, g, k_hw, cfg):
    return _call("dk", (*k_hw, x.shape[3] // cfg.groups, g.shape[3]), x, g, cfg)
