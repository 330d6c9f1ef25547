"""How the three convolution maps are computed: the algorithms behind the convolutions' rules.

Each map (forward y, dX, dK) has the same mathematical definition under every algorithm; the
suite runs its whole sweep once per algorithm. Every formulation is written once for any number
of spatial axes (described below in 2-D: a tap `(a, b)` is a tuple over the kernel's axes, the
phases a product over every strided axis). ``cfg.algorithm`` is already resolved (never
"auto") when these run; under "auto" it is the CPU's choice, and ``_per_platform`` gives every
other platform XLA's own convolution (the formulations below were measured on a CPU only).

- ``xla``: one ``lax.conv_general_dilated`` per map, exactly the formulation in conv.py's
  rules: dX with the upstream gradient dilated by the stride (``lhs_dilation``), dK with the
  batch contracted. Grouped and in float64, one convolution per group (``grouped``: XLA:CPU's
  float64 grouped convolution lets a NaN of one group reach every group's outputs).
- ``phase``: as ``xla``, but a strided dX is split by output phase (sub-pixel decomposition).
  Row ``q = r + m*s`` of dX only receives kernel taps ``a`` with ``a*d = r (mod s)``, so each of
  the ``s_h * s_w`` phases is a stride-1 full convolution of the *undilated* g with that subset
  of taps; the phases are interleaved. The ``xla`` dX multiplies the ``s-1`` inserted zeros
  too; this skips them (about ``s_h * s_w`` times fewer multiplies). On CPU its forward and
  dX convolutions also compute a few extra output rows and drop them: jaxlib's CPU backend
  hands a convolution whose total padding is at most ``F_eff - 1`` to a single-threaded
  YNNPACK kernel, and any other to its multi-threaded Eigen kernel, faster on several cores
  for 16+ channels (docs/performance.md). Other platforms run the plain convolution.
- ``im2col``: patches of the padded input (one strided slice per tap, concatenated) times the
  kernel as a matrix. Forward ``P @ W``, dK ``P^T @ G``, dX ``col2im(G @ W^T)``: every tap's
  column block written back with ``_taps.write_all``. Pays off when ``kh*kw*C_in`` is small (first
  layers on images), where XLA's CPU convolution is slow.
- ``taps``: the direct sum written out. Forward ``y = sum_{a,b,c} x_tap(a,b)[..., c] * w[a,b,c,:]``:
  ``kh*kw*C_in`` broadcast multiply-adds that XLA fuses into one loop over the output, reading the
  small input from cache and writing y once (no patch matrix, no GEMM). dX is the adjoint:
  ``g @ w[a,b]^T`` written back per tap (as col2im); dK one contraction per tap,
  ``x_tap(a,b)^T g``. For 1-4 input channels the forward beats XLA's convolution and im2col
  on a CPU; beyond that the GEMM formulations win (docs/performance.md). With more than
  ``TAPS_BROADCAST_MAX`` input channels each tap is one small GEMM instead (the program stays
  ``kh*kw`` terms long whatever ``C_in``).
- ``onednn`` (only where the install built the native part, fcnn.ops.onednn): each map one call
  of oneDNN's convolution kernel through the XLA FFI, on the CPU, in float32 (another dtype runs
  ``xla``): the forward, its backward-data primitive for dX, its backward-weights primitive for
  dK. Other platforms run ``xla``.
"""

from __future__ import annotations

import math
from functools import partial

import jax.numpy as jnp
from jax import lax

from fcnn import _args
from fcnn.ops import _taps, onednn, tuning


def dimension_numbers(rank):
    """Channels-last activations `(N, *spatial, C)`, kernels `(*spatial, I, O)`: lax's
    `ConvDimensionNumbers` for `rank` spatial axes (`NHWC, HWIO, NHWC` in 2-D)."""
    sp = tuple(range(1, rank + 1))
    return lax.ConvDimensionNumbers((0, rank + 1, *sp), (rank + 1, rank, *range(rank)),
                                    (0, rank + 1, *sp))


def dk_dimension_numbers(rank):
    """dK as one convolution: the batch is the contraction axis (the lhs's feature axis, g's
    input axis), the input channels ride in the lhs batch slot and come out as the kernel's I
    axis (`CHWN, IHWO, HWNC` in 2-D)."""
    sp = tuple(range(1, rank + 1))
    return lax.ConvDimensionNumbers((rank + 1, 0, *sp), (rank + 1, 0, *sp),
                                    (rank, rank + 1, *range(rank)))


ALGORITHMS = ("xla", "phase", "im2col", "taps") + (("onednn",) if onednn.AVAILABLE else ())
ONEDNN_DTYPES = (jnp.float32,)
# taps: input channels up to this are broadcast multiply-adds; beyond, one GEMM per tap
TAPS_BROADCAST_MAX = 8
# im2col dK: batch chunk whose patch matrix is at most this size (about L2 + a share of L3)
IM2COL_CHUNK_BYTES = 3 << 20


def choose(w_shape, groups, in_hw=None) -> tuple[str, str, str]:
    """The algorithms "auto" picks for (forward, dX, dK) on a CPU (other platforms run "xla",
    see `_per_platform`), by shape alone, for any rank (a kernel's taps are the product of its
    spatial sizes). The rules are tabulated in docs/design.md; the measurements behind each
    (per map, on a 2-core AVX-512 CPU, jaxlib 0.10) are in docs/performance.md, "What auto
    picks and why".

    - one input channel (a grey image): taps forward, col2im dX, XLA's dK;
    - 2-4 input channels (RGB) and at most 48 taps x channels: taps forward, im2col dX and dK
      (XLA's CPU conv is memory-bound with 3 channels);
    - 16+ channels in and out: phase forward and dX (multi-threaded, no zero multiplies);
      cache-blocked im2col dK (XLA's runs on about one core) while one image's patch matrix
      fits in 2 x IM2COL_CHUNK_BYTES (`in_hw` is the input's spatial size), else XLA's;
    - 5-8 input channels (e.g. LeNet's 6 -> 16): XLA's forward, col2im dX, cache-blocked
      im2col dK under the same size rule;
    - otherwise: XLA's convolutions.
    """
    *k_sp, cig, cout = w_shape
    taps = math.prod(k_sp)
    in_hw = (1,) * len(k_sp) if in_hw is None else in_hw
    patch_bytes = math.prod(in_hw) * taps * cig * groups * 4
    blocked_dk = "im2col" if patch_bytes <= 2 * IM2COL_CHUNK_BYTES else "xla"
    if groups == 1 and cig == 1:
        return ("taps", "im2col", "xla")
    if groups == 1 and cig <= 4 and taps * cig <= 48:
        return ("taps", "im2col", "im2col")
    if min(cig, cout // groups) >= 16:
        return ("phase", "phase", blocked_dk)
    if groups == 1 and cig <= 8:
        return ("xla", "im2col", blocked_dk)
    return ("xla", "xla", "xla")


def grouped(lhs, rhs, strides, pads, *, groups, lhs_dilation=None, rhs_dilation=None,
            precision=None):
    """`lax.conv_general_dilated` channels-last with `groups` feature groups. In float64 each
    group is its own convolution, concatenated: XLA:CPU's float64 grouped convolution multiplies
    every group's inputs into every output (zeros off the groups' blocks), so one NaN or inf
    input made every group's outputs NaN (measured, jaxlib 0.10: a NaN in channel 0 of a
    2-group convolution reached all 4 outputs in float64, 2 of 4 in float32, float16 and
    bfloat16; docs/correctness.md)."""
    r = len(pads)
    conv = partial(lax.conv_general_dilated, window_strides=strides, padding=pads,
                   lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                   dimension_numbers=dimension_numbers(r), precision=precision)
    if groups == 1 or lhs.dtype != jnp.float64:
        return conv(lhs, rhs, feature_group_count=groups)
    cin, cout = lhs.shape[-1] // groups, rhs.shape[-1] // groups
    return jnp.concatenate([
        conv(lax.slice_in_dim(lhs, j * cin, (j + 1) * cin, axis=r + 1),
             lax.slice_in_dim(rhs, j * cout, (j + 1) * cout, axis=r + 1))
        for j in range(groups)], axis=r + 1)


def rank(cfg) -> int:
    """The number of spatial axes of a convolution's configuration."""
    return len(cfg.stride)


def _ones(n):
    return (1,) * n


def _conv(lhs, rhs, pads, *, lhs_dilation=None, rhs_dilation=None, groups=1, all_cores=False,
          precision=None):
    """Stride-1 channels-last convolution; `all_cores` steers XLA:CPU to its Eigen kernel by
    padding the high end of the first spatial axis until its total exceeds F_eff - 1 and
    cropping those extra rows."""
    r = len(pads)
    lhs_dilation = lhs_dilation or _ones(r)
    rhs_dilation = rhs_dilation or _ones(r)

    def run(lhs, rhs, pads):
        return grouped(lhs, rhs, _ones(r), pads, groups=groups, lhs_dilation=lhs_dilation,
                       rhs_dilation=rhs_dilation, precision=precision)

    if not all_cores:
        return run(lhs, rhs, pads)
    f = _args.effective_window(rhs.shape[0], rhs_dilation[0])
    extra = max(1, f - sum(pads[0]))

    def cpu(lhs, rhs):
        y = run(lhs, rhs, ((pads[0][0], pads[0][1] + extra), *pads[1:]))
        return y[:, : y.shape[1] - extra]

    return lax.platform_dependent(lhs, rhs, cpu=cpu, default=partial(run, pads=pads))


def _unit_stride(cfg) -> bool:
    return all(s == 1 for s in cfg.stride)


def candidates(which, cfg, dtype) -> tuple[str, ...]:
    """The algorithms that compute map `which` (0 forward, 1 dX, 2 dK) of `cfg` in `dtype`
    differently: a strided forward's "phase" is XLA's convolution, dX's "taps" is im2col's
    col2im, dK's "phase" is XLA's; "onednn" where it is built, in float32, for the ranks its
    handlers take (`onednn.RANKS`)."""
    if which == 0:
        own = ("xla", "phase", "im2col", "taps") if _unit_stride(cfg) else (
            "xla", "im2col", "taps")
    else:
        own = ("xla", "phase", "im2col") if which == 1 else ("xla", "im2col", "taps")
    return own + (("onednn",) if _onednn_runs(dtype, cfg) else ())


def _onednn_runs(dtype, cfg, fused=False) -> bool:
    """Whether oneDNN's kernels can compute a map of `cfg` in `dtype`; `fused`: the fused
    convolution's handlers, or the members' (1-D and 2-D)."""
    return (onednn.AVAILABLE and jnp.dtype(dtype) in ONEDNN_DTYPES
            and rank(cfg) in (onednn.FUSED_RANKS if fused else onednn.RANKS))


def _same(which, cfg, dtype, algorithm) -> str:
    """The candidate that computes map `which` as `algorithm` does."""
    if algorithm in candidates(which, cfg, dtype):
        return algorithm
    return "im2col" if which == 1 and algorithm == "taps" else "xla"


def _per_platform(cfg, which, run, operands, size, epilogue=None):
    """`run(algorithm, *operands)` for map `which` (0 forward, 1 dX, 2 dK) of `cfg`; `size` is the
    input's spatial size (dX) or the kernel's (dK), () for the forward.

    Under "auto" the CPU's algorithm is measured once per shape and machine and kept on disk
    (fcnn.tuning; `choose` is the table it falls back on), and it sits behind
    `lax.platform_dependent`: lowered for CPU the program holds the chosen formulation; for any
    other platform (CUDA, ROCm, TPU) XLA's own convolution, which cuDNN and the TPU's
    convolution units take (no im2col patches, no scan over batch chunks there). The choice is
    resolved when the program is lowered for one platform; an artifact exported for several
    carries both branches and the platform picks its own when it compiles. An algorithm named
    explicitly runs as named on every platform, except "onednn": a CPU kernel, XLA's
    convolution elsewhere.
    """
    algorithm = choice(cfg, which, run, operands, size, epilogue)
    dtype = operands[0].dtype
    if algorithm == "xla" or (not cfg.auto and (algorithm != "onednn"
                                                or not _onednn_runs(dtype, cfg))):
        return run(algorithm, *operands)  # named explicitly: as named on every platform
    return lax.platform_dependent(*operands, cpu=partial(run, algorithm),
                                  default=partial(run, "xla"))


def choice(cfg, which, run, operands, size, epilogue=None) -> str:
    """The CPU's algorithm for map `which` on `operands` (see `_per_platform`): as named, or
    under "auto" measured with `run(algorithm, *operands)` and kept (fcnn.tuning). A map with an
    `epilogue` (the fused convolution's "bias", "relu" or "bias+relu") is measured and kept as
    its own key."""
    if not cfg.auto:
        return cfg.algorithm[which]
    dtype = operands[0].dtype
    config = {"stride": list(cfg.stride), "padding": [list(p) for p in cfg.padding],
              "dilation": list(cfg.dilation), "groups": cfg.groups, "size": list(size)}
    if epilogue:
        config["epilogue"] = epilogue
    if cfg.precision is not None:  # (keys recorded before the argument stay the same)
        config["precision"] = cfg.precision
    return tuning.resolve(
        which, tuple(a.shape for a in operands), dtype, config, candidates(which, cfg, dtype),
        _same(which, cfg, dtype, cfg.algorithm[which]), run)


def runs_onednn(which, a, b, size, cfg) -> bool:
    """Whether map `which` of the single problem (a, b) runs oneDNN's kernel on this CPU (its
    `choice`, measured under "auto" as its lowering will be)."""
    if not _onednn_runs(a.dtype, cfg) or tuning.exporting():
        return False
    return choice(cfg, which, _run(which, size, cfg), (a, b), size) == "onednn"


def _run(which, size, cfg):
    """`run(algorithm, a, b)` computing map `which` (what `choice` measures)."""
    if which == 0:
        return lambda algorithm, x, w: held(algorithm, _forward(algorithm, x, w, cfg))
    return _dx_run(size, cfg) if which == 1 else _dk_run(size, cfg)


def members(which, a, b, size, cfg, one):
    """Map `which` (0 forward, 1 dX, 2 dK; `size` as in `choice`) of the K independent problems
    of a leading axis on `a` and `b`, each computed by `one(a_k, b_k)`: where the single
    problem's CPU algorithm is oneDNN's, one native call over all K (no slice of the members'
    arrays, no stacking of results; `onednn.members`), elsewhere and on other platforms each
    problem as its own computation, stacked."""

    def unrolled(a, b):
        return jnp.stack([one(a[i], b[i]) for i in range(a.shape[0])])

    if not (runs_onednn(which, a[0], b[0], size, cfg)
            and _onednn_runs(a.dtype, cfg, fused=True)):
        return unrolled(a, b)
    r = rank(cfg)
    # the result's spatial size
    out = _out_hw(a.shape[2:2 + r], b.shape[1:1 + r], cfg) if which == 0 else size
    return lax.platform_dependent(a, b, cpu=partial(onednn.members, which, size=out, cfg=cfg),
                                  default=unrolled)


def _windows(k_hw, cfg):
    return tuple(_args.effective_window(k, d) for k, d in zip(k_hw, cfg.dilation))


def _remainders(in_hw, k_hw, cfg):
    return tuple(
        _args.remainder(n, f, s, p)
        for n, f, s, p in zip(in_hw, _windows(k_hw, cfg), cfg.stride, cfg.padding)
    )


def _out_hw(in_hw, k_hw, cfg):
    return tuple(
        _args.output_size(n, f, s, p)
        for n, f, s, p in zip(in_hw, _windows(k_hw, cfg), cfg.stride, cfg.padding)
    )


def out_shape(x_shape, w_shape, cfg):
    """The forward's output shape for a batched input of `x_shape` and a kernel of `w_shape`."""
    return (x_shape[0], *_out_hw(x_shape[1:-1], w_shape[:-2], cfg), w_shape[-1])


def dx_shape(g_shape, w_shape, in_sizes, cfg):
    return (g_shape[0], *in_sizes, w_shape[-2] * cfg.groups)


def dk_shape(x_shape, g_shape, k_sizes, cfg):
    return (*k_sizes, x_shape[-1] // cfg.groups, g_shape[-1])


def _transposed_kernel(w, groups):
    """(*k, C_in/G, C_out) -> (*k, C_out/G, C_in): in/out swapped within each group."""
    *k, cig, cout = w.shape
    r = len(k)
    wt = w.reshape(*k, cig, groups, cout // groups)
    wt = wt.transpose(*range(r), r + 2, r + 1, r)
    return wt.reshape(*k, cout // groups, groups * cig)


# ----------------------------------------------------------------------------- forward


def forward(x, w, cfg):
    return _per_platform(cfg, 0, _run(0, (), cfg), (x, w), ())


def _forward(algorithm, x, w, cfg):
    if algorithm == "onednn" and _onednn_runs(x.dtype, cfg):
        return onednn.forward(x, w, _out_hw(x.shape[1:-1], w.shape[:-2], cfg), cfg)
    if algorithm == "im2col":
        return _forward_im2col(x, w, cfg)
    if algorithm == "taps":
        return _forward_taps(x, w, cfg)
    if algorithm == "phase" and _unit_stride(cfg):
        return _conv(x, w, cfg.padding, rhs_dilation=cfg.dilation, groups=cfg.groups,
                     all_cores=True, precision=cfg.precision)
    return grouped(x, w, cfg.stride, cfg.padding, groups=cfg.groups, rhs_dilation=cfg.dilation,
                   precision=cfg.precision)


def _patches(x, k_sp, cfg):
    """`(N*prod(out), prod(k), G, C_in/G)` patches of the padded input, tap-major."""
    cin = x.shape[-1]
    out = _out_hw(x.shape[1:-1], k_sp, cfg)
    xp = _taps.pad(x, cfg.padding)
    taps = [_taps.read(xp, t, out, cfg.stride, cfg.dilation) for t in _taps.all_taps(k_sp)]
    cols = jnp.stack(taps, axis=-2)  # (N, *out, T, C_in)
    rows = x.shape[0] * math.prod(out)
    return cols.reshape(rows, math.prod(k_sp), cfg.groups, cin // cfg.groups), out


def _forward_im2col(x, w, cfg):
    *k_sp, cig, cout = w.shape
    cols, out = _patches(x, k_sp, cfg)
    wm = w.reshape(math.prod(k_sp), cig, cfg.groups, cout // cfg.groups)
    y = jnp.einsum("mtgc,tcgo->mgo", cols, wm, precision=cfg.precision)
    return y.reshape(x.shape[0], *out, cout)


def _forward_taps(x, w, cfg):
    *k_sp, cig, cout = w.shape
    n = x.shape[0]
    out = _out_hw(x.shape[1:-1], k_sp, cfg)
    xp = _taps.pad(x, cfg.padding)
    groups, cog = cfg.groups, cout // cfg.groups
    r = len(k_sp)
    y = None
    for t in _taps.all_taps(k_sp):
        tap = _taps.read(xp, t, out, cfg.stride, cfg.dilation)  # (N, *out, C_in)
        wt = w[t]  # (C_in/G, C_out)
        if cig > TAPS_BROADCAST_MAX:  # one small GEMM per tap keeps the program short
            terms = [jnp.einsum("...gc,gco->...go", tap.reshape(n, *out, groups, cig),
                                wt.reshape(cig, groups, cog).transpose(1, 0, 2),
                                precision=cfg.precision)]
        else:  # input channel c of every group times that group's output filters
            terms = [lax.slice_in_dim(tap, c, tap.shape[-1], cig, axis=r + 1)[..., None]
                     * wt[c].reshape(*_ones(r + 1), groups, cog) for c in range(cig)]
        for term in terms:
            y = term if y is None else y + term
    return y.reshape(n, *out, cout)


def held(algorithm, y):
    """A forward's output `y`, through `materialized` when `algorithm` is "taps"."""
    return materialized(y) if algorithm == "taps" else y


def materialized(y):
    """`y`, held in memory for its readers where the native kernels are loaded (float32, not
    lowered for export; on the CPU). The `taps` sum is an elementwise chain that XLA's CPU
    compiler fuses into every reader: a max pool's forward, its backward's argmax and the ReLU
    mask each recomputed it (LeNet-5's step with `taps` for its first layer 15.8 against 6.1
    ms, docs/performance.md). A native call's result is opaque to XLA, so its readers read it.
    Without the native kernels the max pool keeps it in memory itself (`pool._max_pool_impl`)."""
    if not (onednn.AVAILABLE and jnp.dtype(y.dtype) in ONEDNN_DTYPES
            and not tuning.exporting()):
        return y
    return lax.platform_dependent(y, cpu=onednn.materialize, default=lambda y: y)


# ----------------------------------------------------------------------------- dX


def grad_input(g, w, in_hw, cfg):
    return _per_platform(cfg, 1, _dx_run(in_hw, cfg), (g, w), in_hw)


def _dx_run(in_hw, cfg):
    return lambda algorithm, g, w: _grad_input(algorithm, g, w, in_hw, cfg)


def choice_dx(g, w, in_hw, cfg) -> str:
    """The algorithm `grad_input` runs for these operands on a CPU."""
    return choice(cfg, 1, _dx_run(in_hw, cfg), (g, w), in_hw)


def _grad_input(algorithm, g, w, in_hw, cfg):
    if algorithm == "onednn" and _onednn_runs(g.dtype, cfg):
        return onednn.grad_input(g, w, in_hw, cfg)
    if algorithm in ("im2col", "taps"):  # the adjoint of reading taps is writing them back
        return _grad_input_col2im(g, w, in_hw, cfg)
    r = rank(cfg)
    k_sp = w.shape[:-2]
    pads = tuple(
        (f - 1 - lo, f - 1 - hi + rem)
        for f, (lo, hi), rem in zip(_windows(k_sp, cfg), cfg.padding,
                                    _remainders(in_hw, k_sp, cfg))
    )
    flipped = jnp.flip(_transposed_kernel(w, cfg.groups), tuple(range(r)))
    if algorithm == "phase" and _unit_stride(cfg):
        # one phase: the full convolution itself, only the rows of dX (not of the padded
        # input), routed to all cores (the CIFAR net's 16x16 layers: 17x16 rows, not 19x18)
        return _conv(g, flipped, pads, rhs_dilation=cfg.dilation, groups=cfg.groups,
                     all_cores=True, precision=cfg.precision)
    if algorithm == "phase":
        return _grad_input_phases(g, w, in_hw, cfg)
    return grouped(g, flipped, _ones(r), pads, groups=cfg.groups, lhs_dilation=cfg.stride,
                   rhs_dilation=cfg.dilation, precision=cfg.precision)


def _grad_input_col2im(g, w, in_hw, cfg):
    *k_sp, cig, cout = w.shape
    n, out = g.shape[0], g.shape[1:-1]
    taps = _taps.all_taps(k_sp)
    gm = g.reshape(n, math.prod(out), cfg.groups, cout // cfg.groups)
    wm = w.reshape(len(taps), cig, cfg.groups, cout // cfg.groups)
    # (N, prod(out), T, C_in): every tap's contribution, before it is written back
    cols = jnp.einsum("nmgo,tcgo->nmtgc", gm, wm, precision=cfg.precision)
    cols = cols.reshape(n, *out, len(taps), cfg.groups * cig)
    values = [cols[..., i, :] for i in range(len(taps))]
    return _taps.write_all(values, k_sp, in_hw, cfg.padding, cfg.stride, cfg.dilation)


def _phase_taps(k, d, s, r):
    """Kernel taps a (of k, dilation d) with a*d = r (mod s): (first, step, count, offset, dil),
    where `offset = (first*d - r) / s` and consecutive taps are `dil` rows of g apart."""
    taps = [a for a in range(k) if (a * d) % s == r]
    if not taps:
        return None
    q = math.gcd(d, s)
    return taps[0], s // q, len(taps), (taps[0] * d - r) // s, d // q


def _grad_input_phases(g, w, in_hw, cfg):
    """dX by output phase, along every spatial axis at once: phase `p` (one residue per axis)
    is a stride-1 full convolution of g with the kernel taps that land on it; the phases are
    then interleaved (a stack and a reshape) and the padding cropped."""
    n, out = g.shape[0], g.shape[1:-1]
    k_sp = w.shape[:-2]
    r = len(k_sp)
    wt = _transposed_kernel(w, cfg.groups)
    cin = wt.shape[-1]
    # every phase has M = ceil(padded / s) rows per axis so the phases interleave into M*s
    m = [-(-(n_ + lo + hi) // s) for n_, (lo, hi), s in zip(in_hw, cfg.padding, cfg.stride)]

    def phase(residues):
        per_axis = [_phase_taps(k, d, s, q)
                    for k, d, s, q in zip(k_sp, cfg.dilation, cfg.stride, residues)]
        if any(t is None for t in per_axis):  # no tap lands on this phase (even dilation)
            return jnp.zeros((n, *m, cin), g.dtype)
        sub = wt[tuple(slice(t[0], None, t[1]) for t in per_axis)]
        sub = sub[tuple(slice(0, t[2]) for t in per_axis)]
        pads = [(t[3] + (t[2] - 1) * t[4], mi - oi - t[3])
                for t, mi, oi in zip(per_axis, m, out)]
        return _conv(g, jnp.flip(sub, tuple(range(r))), pads,
                     rhs_dilation=tuple(t[4] for t in per_axis), groups=cfg.groups,
                     all_cores=True, precision=cfg.precision)

    # phases[q_1][q_2]... stacked so that axis k's residue sits right after axis k's M
    def nest(axis, prefix):
        if axis == r:
            return phase(prefix)
        parts = [nest(axis + 1, (*prefix, q)) for q in range(cfg.stride[axis])]
        return jnp.stack(parts, axis=axis + 2)  # right after this axis's M (the earlier axes
        # are not interleaved yet; the later ones carry their residue after their M already)

    full = nest(0, ()).reshape(n, *(mi * s for mi, s in zip(m, cfg.stride)), cin)
    return full[(slice(None), *(slice(lo, lo + n_) for (lo, _), n_ in zip(cfg.padding, in_hw)))]


# ----------------------------------------------------------------------------- dK


def grad_kernel(x, g, k_hw, cfg):
    return _per_platform(cfg, 2, _dk_run(k_hw, cfg), (x, g), k_hw)


def _dk_run(k_hw, cfg):
    return lambda algorithm, x, g: _grad_kernel(algorithm, x, g, k_hw, cfg)


def choice_dk(x, g, k_hw, cfg) -> str:
    """The algorithm `grad_kernel` runs for these operands on a CPU."""
    return choice(cfg, 2, _dk_run(k_hw, cfg), (x, g), k_hw)


def _grad_kernel(algorithm, x, g, k_hw, cfg):
    if algorithm == "onednn" and _onednn_runs(x.dtype, cfg):
        return onednn.grad_kernel(x, g, k_hw, cfg)
    if algorithm == "taps":
        return _grad_kernel_taps(x, g, k_hw, cfg)
    if algorithm == "im2col":
        return _grad_kernel_im2col(x, g, k_hw, cfg)
    pads = tuple((lo, hi - rem) for (lo, hi), rem in zip(cfg.padding,
                                                         _remainders(x.shape[1:-1], k_hw, cfg)))
    return lax.conv_general_dilated(
        x, g, cfg.dilation, pads, rhs_dilation=cfg.stride,
        dimension_numbers=dk_dimension_numbers(rank(cfg)), batch_group_count=cfg.groups,
        precision=cfg.precision,
    )


def _chunk_size(n, cap):
    """Images per dK chunk: the largest divisor of `n` up to `cap` when it is at least half of
    `cap` (the batch reshapes into chunks for free), else `cap` and the batch is padded with
    zero images (a copy of x and g, which made the CIFAR net step slower; docs/performance.md)."""
    divisor = max(d for d in range(1, cap + 1) if n % d == 0)
    return divisor if 2 * divisor >= cap else cap


def _grad_kernel_im2col(x, g, k_hw, cfg):
    """dK = patches^T @ G, cache-blocked: the batch is cut into chunks whose patch matrix is
    about IM2COL_CHUNK_BYTES, and a scan accumulates one GEMM per chunk, so the 9x patch matrix
    of a 3x3 layer is never written out whole (its speed against XLA's dK: docs/performance.md)."""
    n, cin = x.shape[0], x.shape[-1]
    cout = g.shape[-1]
    groups = cfg.groups
    taps = math.prod(k_hw)
    per_image = math.prod(g.shape[1:-1]) * taps * cin * x.dtype.itemsize
    size = _chunk_size(n, max(1, min(n, IM2COL_CHUNK_BYTES // per_image)))
    chunks = -(-n // size)
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)

    def chunk_dk(xc, gc):
        cols, _ = _patches(xc, k_hw, cfg)
        gm = gc.reshape(gc.shape[0] * math.prod(gc.shape[1:-1]), groups, cout // groups)
        return jnp.einsum("mtgc,mgo->tcgo", cols, gm, preferred_element_type=acc_dtype,
                          precision=cfg.precision)

    if chunks == 1:
        dw = chunk_dk(x, g)
    else:
        extra = chunks * size - n  # zero images add nothing to dK
        if extra:
            x = jnp.pad(x, ((0, extra),) + ((0, 0),) * (x.ndim - 1))
            g = jnp.pad(g, ((0, extra),) + ((0, 0),) * (g.ndim - 1))
        xs = x.reshape(chunks, size, *x.shape[1:])
        gs = g.reshape(chunks, size, *g.shape[1:])
        zero = jnp.zeros((taps, cin // groups, groups, cout // groups), acc_dtype)
        dw, _ = lax.scan(lambda acc, xg: (acc + chunk_dk(*xg), None), zero, (xs, gs))
    return dw.astype(x.dtype).reshape(*k_hw, cin // groups, cout)


def _grad_kernel_taps(x, g, k_hw, cfg):
    """dK[t] = x_tap(t)^T g, contracted over (N, *out) within each group."""
    n, out, cout = g.shape[0], g.shape[1:-1], g.shape[-1]
    cin, groups = x.shape[-1], cfg.groups
    xp = _taps.pad(x, cfg.padding)
    m = math.prod(out)
    gm = g.reshape(n, m, groups, cout // groups)
    rows = []
    for t in _taps.all_taps(k_hw):
        tap = _taps.read(xp, t, out, cfg.stride, cfg.dilation)
        tap = tap.reshape(n, m, groups, cin // groups)
        rows.append(jnp.einsum("nmgc,nmgo->cgo", tap, gm, precision=cfg.precision)
                    .reshape(cin // groups, cout))
    return jnp.stack(rows).reshape(*k_hw, cin // groups, cout)
