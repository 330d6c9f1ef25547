"""The "onednn" convolution algorithm: oneDNN's kernels through the XLA FFI (native/).

fcnn's rules decide what each map is; oneDNN computes it, on the CPU, in float32:

    forward  y  = conv(x, w)      oneDNN convolution_forward on fcnn's own NHWC/HWIO buffers
    dX       dX = conv_dx(g, w)   convolution_backward_data: the full convolution of g with the
                                  flipped kernel
    dK       dK = conv_dk(x, g)   convolution_backward_weights: the cross-correlation of x
                                  with g

Each is a `jax.ffi.ffi_call` of a handler in `fcnn/_native/libfcnn_onednn.so`, which `pip
install .` builds on Linux x86-64 with a C++ compiler (native/build.py); without it fcnn runs on
its own algorithms and "onednn" is not among them. The library is registered only in a process
whose jaxlib and oneDNN are the ones it was built against (`refusal`); otherwise fcnn warns once
and runs without it. The activations stay in fcnn's NHWC layout (no copy of the large tensors);
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
import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np

LIBRARY = Path(__file__).resolve().parents[1] / "_native" / "libfcnn_onednn.so"
NOT_BUILT = LIBRARY.with_name("not-built.txt")  # the install's reason, when it built none
LIBDNNL = "libdnnl.so.3"
TARGETS = {"forward": "fcnn_onednn_conv_fwd", "dx": "fcnn_onednn_conv_dx",
           "dk": "fcnn_onednn_conv_dk", "act_forward": "fcnn_onednn_conv_act_fwd",
           "act_backward": "fcnn_onednn_conv_act_bwd", "bn_forward": "fcnn_batch_norm_fwd",
           "bn_backward": "fcnn_batch_norm_bwd", "members": "fcnn_onednn_conv_members",
           "materialize": "fcnn_materialize", "forward3": "fcnn_onednn_conv_fwd3",
           "dx3": "fcnn_onednn_conv_dx3", "dk3": "fcnn_onednn_conv_dk3"}
_SYMBOLS = {"forward": "OnednnConvFwd", "dx": "OnednnConvBwdData", "dk": "OnednnConvBwdWeights",
            "act_forward": "OnednnConvActFwd", "act_backward": "OnednnConvActBwd",
            "bn_forward": "OnednnBatchNormFwd", "bn_backward": "OnednnBatchNormBwd",
            "members": "OnednnConvMembers", "materialize": "OnednnMaterialize",
            "forward3": "OnednnConvFwd3", "dx3": "OnednnConvBwdData3",
            "dk3": "OnednnConvBwdWeights3"}
_REBUILD = "reinstall fcnn to rebuild it (pip install .)"


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _find_libdnnl():
    """oneDNN's runtime: the onednn-cpu-gomp wheel's libdnnl.so.3 (installed as a dependency
    beside fcnn), else whatever the dynamic loader finds by that name. (path or name, why not)"""
    try:
        dist = importlib.metadata.distribution("onednn-cpu-gomp")
        for f in dist.files or ():
            if f.name == LIBDNNL and Path(dist.locate_file(f)).is_file():
                return str(Path(dist.locate_file(f)).resolve()), ""
    except importlib.metadata.PackageNotFoundError:
        pass
    return LIBDNNL, "the onednn-cpu-gomp wheel is not installed"


class _DnnlVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


def refusal(built: dict, jaxlib: str | None, onednn) -> str:
    """Why a library built as `built` (its OnednnBuildInfo) must not run in a process with this
    jaxlib and oneDNN (major, minor, patch) ("" if it may): the XLA FFI's structures and
    oneDNN's API are compiled in, so both must be the ones it was built against."""
    if built.get("jaxlib") != jaxlib:
        return (f"{LIBRARY.name} was built for jaxlib {built.get('jaxlib')} and this is jaxlib "
                f"{jaxlib}: {_REBUILD}")
    if list(built.get("onednn", ()))[:2] != list(onednn)[:2]:
        want = ".".join(map(str, built.get("onednn", ())))
        return (f"{LIBRARY.name} was built for oneDNN {want} and this process loaded oneDNN "
                f"{'.'.join(map(str, onednn))}: pip install onednn-cpu-gomp==2023.2.0")
    return ""


def _load():
    """(library, build info, "") once loaded and registered, or (None, build info, why not)."""
    if os.environ.get("FCNN_ONEDNN", "1") == "0":
        return None, {}, "FCNN_ONEDNN=0 in the environment"
    if not LIBRARY.exists():
        if NOT_BUILT.exists():
            return None, {}, f"this install built none: {NOT_BUILT.read_text().strip()}"
        return None, {}, f"{LIBRARY} is missing: {_REBUILD} on Linux x86-64 with a C++ compiler"
    where, missing = _find_libdnnl()
    try:
        dnnl = ctypes.CDLL(where)
        lib = ctypes.CDLL(str(LIBRARY))  # finds libdnnl.so.3 loaded above by its soname
    except OSError as e:
        return None, {}, f"{LIBRARY.name} did not load ({missing or where}): {e}"
    lib.OnednnBuildInfo.restype = ctypes.c_char_p
    built = json.loads(lib.OnednnBuildInfo().decode())
    dnnl.dnnl_version.restype = ctypes.POINTER(_DnnlVersion)
    v = dnnl.dnnl_version().contents
    built["onednn_loaded"] = [v.major, v.minor, v.patch]
    built["libdnnl"] = where
    why = refusal(built, _version("jaxlib"), (v.major, v.minor, v.patch))
    if why:
        return None, built, why
    import jax

    absent = [symbol for symbol in _SYMBOLS.values() if not hasattr(lib, symbol)]
    if absent:  # a library built from an older fcnn
        return None, built, f"{LIBRARY.name} lacks {', '.join(absent)}: {_REBUILD}"
    for name, symbol in _SYMBOLS.items():
        jax.ffi.register_ffi_target(TARGETS[name], jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")
    lib.OnednnConvImplInfo.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.OnednnConvImplInfo.restype = ctypes.c_int
    return lib, built, ""


_lib, BUILD, WHY_NOT = _load()
AVAILABLE = _lib is not None
if not AVAILABLE and BUILD:  # a library is there, built for something else: say so once
    import warnings

    warnings.warn(f"fcnn: the native kernels are not used: {WHY_NOT}", stacklevel=2)


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


# The handlers take 2-D and 3-D problems (NHWC, NDHWC); a 1-D one runs as 2-D with a unit height
# (its stride 1, padding 0, dilation 1 there): the same sums, the same kernels (oneDNN itself
# treats a 1-D convolution as a 2-D one). The fused convolution's handlers and the members'
# take 1-D and 2-D: a 3-D convolution with a bias or under an ensemble's vmap runs the three
# maps' handlers, the epilogue by XLA.
RANKS = (1, 2, 3)
FUSED_RANKS = (1, 2)


def _lift(cfg):
    """A 1-D configuration as the 2-D one with a unit height; a 2-D one as it is."""
    if len(cfg.stride) == 2:
        return cfg
    return cfg._replace(stride=(1, *cfg.stride), padding=((0, 0), *cfg.padding),
                        dilation=(1, *cfg.dilation))


def _up(a, cfg, axis):
    """`a` with a unit height inserted at `axis` for a 1-D problem."""
    return a if len(cfg.stride) == 2 else a.reshape(*a.shape[:axis], 1, *a.shape[axis:])


def _down(a, cfg, axis):
    return a if len(cfg.stride) == 2 else a.reshape(*a.shape[:axis], *a.shape[axis + 1:])


def _attrs(cfg):
    return dict(window_strides=np.asarray(cfg.stride, np.int64),
                padding=np.asarray([p for pair in cfg.padding for p in pair], np.int64),
                rhs_dilation=np.asarray(cfg.dilation, np.int64),
                feature_group_count=np.int64(cfg.groups))


def _call(which, out_shape, a, b, cfg):
    import jax

    target = TARGETS[which + ("3" if len(cfg.stride) == 3 else "")]
    return jax.ffi.ffi_call(
        target, jax.ShapeDtypeStruct(tuple(out_shape), a.dtype),
        # under vmap (a batch of problems) one call per problem
        vmap_method="sequential",
    )(a, b, **_attrs(cfg))


def forward(x, w, out_hw, cfg):
    if len(cfg.stride) == 1:
        return _down(forward(_up(x, cfg, 1), _up(w, cfg, 0), (1, *out_hw), _lift(cfg)), cfg, 1)
    return _call("forward", (x.shape[0], *out_hw, w.shape[-1]), x, w, cfg)


def grad_input(g, w, in_hw, cfg):
    if len(cfg.stride) == 1:
        return _down(grad_input(_up(g, cfg, 1), _up(w, cfg, 0), (1, *in_hw), _lift(cfg)), cfg, 1)
    return _call("dx", (g.shape[0], *in_hw, w.shape[-2] * cfg.groups), g, w, cfg)


def grad_kernel(x, g, k_hw, cfg):
    if len(cfg.stride) == 1:
        return _down(grad_kernel(_up(x, cfg, 1), _up(g, cfg, 1), (1, *k_hw), _lift(cfg)), cfg, 0)
    return _call("dk", (*k_hw, x.shape[-1] // cfg.groups, g.shape[-1]), x, g, cfg)


def members(which, a, b, size, cfg):
    """Map `which` (0 forward, 1 dX, 2 dK) of K independent problems in one call: `a` and `b`
    carry a leading axis of K (an ensemble's members: (x, w), (g, w) or (x, g) each), and so
    does the result; `size` is the result's spatial size (the output's H, W for the forward,
    the input's for dX, the kernel's for dK). The K*N images are
    split over XLA's threads as one batch."""
    import jax

    if len(cfg.stride) == 1:  # activations gain the unit height after (K, N), kernels after K
        a2 = _up(a, cfg, 2)
        b2 = _up(b, cfg, 2 if which == 2 else 1)
        out = members(which, a2, b2, (1, *size), _lift(cfg))
        return _down(out, cfg, 1 if which == 2 else 2)
    k = a.shape[0]
    if which == 0:
        shape = (k, a.shape[1], *size, b.shape[4])
    elif which == 1:
        shape = (k, a.shape[1], *size, b.shape[3] * cfg.groups)
    else:
        shape = (k, *size, a.shape[4] // cfg.groups, b.shape[4])
    return jax.ffi.ffi_call(TARGETS["members"], jax.ShapeDtypeStruct(shape, a.dtype),
                            vmap_method="sequential")(a, b, **_attrs(cfg), kind=np.int64(which))


def conv_act(x, w, b, out_hw, cfg, relu):
    """y = act(conv(x, w) + b) in one call: the bias inside oneDNN's kernel, ReLU applied by the
    handler per cached chunk (oneDNN's ReLU post-op turns a NaN into 0); `b` None: no bias."""
    import jax
    import jax.numpy as jnp

    if len(cfg.stride) == 1:
        y = conv_act(_up(x, cfg, 1), _up(w, cfg, 0), b, (1, *out_hw), _lift(cfg), relu)
        return _down(y, cfg, 1)
    b = jnp.zeros((0,), x.dtype) if b is None else b
    return jax.ffi.ffi_call(
        TARGETS["act_forward"], jax.ShapeDtypeStruct((x.shape[0], *out_hw, w.shape[3]), x.dtype),
        vmap_method="sequential",
    )(x, w, b, **_attrs(cfg), relu=np.int64(relu))


def conv_act_backward(gm, x, w, cfg, wants):
    """(dx, dw, db) of y = act(conv(x, w) + b) in one call from gm = m ⊙ g (the mask applied by
    the caller): db summed per chunk of images, then oneDNN's dX and dK of each chunk. Only the
    results named in `wants` (a tuple of three bools) are computed; the others are None."""
    import jax

    if len(cfg.stride) == 1:
        dx, dw, db = conv_act_backward(_up(gm, cfg, 1), _up(x, cfg, 1), _up(w, cfg, 0),
                                       _lift(cfg), wants)
        return (None if dx is None else _down(dx, cfg, 1),
                None if dw is None else _down(dw, cfg, 0), db)
    shapes = (x.shape, w.shape, (w.shape[3],))
    zeros = ((0, 0, 0, 0), (0, 0, 0, 0), (0,))
    outs = [jax.ShapeDtypeStruct(s if want else z, gm.dtype)
            for s, z, want in zip(shapes, zeros, wants)]
    got = jax.ffi.ffi_call(TARGETS["act_backward"], outs, vmap_method="sequential")(
        gm, x, w, **_attrs(cfg))
    return tuple(r if want else None for r, want in zip(got, wants))


def batch_norm(x, gamma, beta, r, eps, relu):
    """(y, mean, var) of training-mode batch norm over every axis of x but the last, the
    residual `r` (None: none) added and ReLU applied after it when `relu`, in one call
    (native/batch_norm.cc): statistics in double, then one pass that normalises, scales,
    shifts, adds and applies ReLU. float32, x with at least one row."""
    import jax
    import jax.numpy as jnp

    r = jnp.zeros((0,), x.dtype) if r is None else r
    c = (x.shape[-1],)
    outs = [jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(c, x.dtype),
            jax.ShapeDtypeStruct(c, x.dtype)]
    return tuple(jax.ffi.ffi_call(TARGETS["bn_forward"], outs, vmap_method="sequential")(
        x, gamma, beta, r, eps=np.float64(eps), relu=np.int64(relu)))


def batch_norm_backward(g, x, y, gamma, mean, var, gmean, gvar, eps, want_dx, want_dr):
    """(dx, dgamma, dbeta, dr): batch norm's cotangent map (fcnn/ops/_batch_norm.py) in two
    passes; `y` None: no ReLU's mask; dx and dr (the masked g, the residual's cotangent) are
    None unless wanted."""
    import jax
    import jax.numpy as jnp

    y = jnp.zeros((0,), x.dtype) if y is None else y
    c = (x.shape[-1],)
    outs = [jax.ShapeDtypeStruct(x.shape if want_dx else (0,), x.dtype),
            jax.ShapeDtypeStruct(c, x.dtype), jax.ShapeDtypeStruct(c, x.dtype),
            jax.ShapeDtypeStruct(x.shape if want_dr else (0,), x.dtype)]
    dx, dgamma, dbeta, dr = jax.ffi.ffi_call(TARGETS["bn_backward"], outs,
                                             vmap_method="sequential")(
        g, x, y, gamma, mean, var, gmean, gvar, eps=np.float64(eps))
    return (dx if want_dx else None), dgamma, dbeta, (dr if want_dr else None)


def materialize(y):
    """y itself, out of a native call whose result XLA cannot fuse into its readers (see
    native/onednn_conv.cc, MaterializeImpl): the result aliases y where XLA can donate it."""
    import jax

    return jax.ffi.ffi_call(TARGETS["materialize"], jax.ShapeDtypeStruct(y.shape, y.dtype),
                            input_output_aliases={0: 0},
                            vmap_method="broadcast_all")(y)  # (the identity: any batch)
