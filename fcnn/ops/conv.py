"""Convolution (cross-correlation) in 1, 2 or 3 spatial axes, its two gradients and the
transposed convolution, each with a hand-written rule.

Three linear maps close under differentiation, so each rule is written with the other two
(`convolution.rules` has the table; shown here in 2-D, every spatial axis alike in any rank):

    conv(x, w)    = y     y[n,i,j,o] = sum_{a,b,c} x[n, i*s + a*d, j*s + b*d, c] w[a,b,c,o]
    conv_dx(g, w) = dX    full convolution of g with the kernel (flipped, in/out swapped)
    conv_dk(x, g) = dK    cross-correlation of the input with the upstream gradient

    d conv   : dx = conv_dx(g, w),   dw = conv_dk(x, g)
    d conv_dx: dg = conv(ct, w),     dw = conv_dk(ct, g)
    d conv_dk: dx = conv_dx(g, ct),  dg = conv(x, ct)

so ``grad(grad(f))`` runs through hand-written rules at every order. The transposed convolution
is conv_dx run forward (its VJP: the forward convolution for x, conv_dk with the roles swapped
for w), not a fourth map. How each map is computed (XLA's convolution, phase-split strided dX,
im2col, taps, oneDNN) is chosen per shape in convolution.algorithms (docs/design.md, "Convolution
algorithms and how auto chooses").
"""

from __future__ import annotations

from typing import NamedTuple

from fcnn import _args
from fcnn.ops import _binding, _checks, onednn
from fcnn.ops._bias import bias_add, check_bias
from fcnn.ops.convolution import algorithms as algo
from fcnn.ops.convolution import custom_vjp as V


class ConvConfig(NamedTuple):
    """Static, hashable configuration of a convolution (explicit padding), one entry per
    spatial axis in `stride`, `padding` and `dilation`."""

    stride: tuple[int, ...]
    padding: tuple[_args.Pair, ...]
    dilation: tuple[int, ...]
    groups: int
    algorithm: tuple[str, str, str]  # resolved for (forward, dX, dK), from algo.ALGORITHMS
    # "auto": `algorithm` is the CPU's measured choice; other platforms run XLA's convolution
    auto: bool = False
    precision: str | None = None  # XLA's (None: the platform's default), see `conv2d`


# ----------------------------------------------------------------------------- public wrappers


ACTIVATIONS = (None, "relu")


def conv1d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
           algorithm="auto", activation=None, precision=None):
    """1-D cross-correlation, NWC x WIO: `conv2d` over one spatial axis (a sequence, a signal).

    Args:
      x: `(N, W, C_in)` or `(W, C_in)`.
      w: `(k, C_in // groups, C_out)`; PyTorch's `Conv1d.weight` `(C_out, C_in // groups, k)`
        is `w.transpose(2, 1, 0)`.
      b: optional `(C_out,)`.
      stride, dilation: int or 1-tuple, >= 1.
      padding: int, `(p,)`, `((low, high),)`, "SAME" or "VALID".
      groups, algorithm, activation: as `conv2d`'s (oneDNN runs a 1-D problem as a 2-D one
        with a unit height).

    Returns:
      `(N, W_out, C_out)` (or unbatched), `W_out = floor((W + p_lo + p_hi - F_eff) / s) + 1`.
    """
    return _convolve("conv1d", 1, x, w, b, stride, padding, dilation, groups, algorithm,
                     activation, precision)


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
           algorithm="auto", activation=None, precision=None):
    """2-D cross-correlation, NHWC x HWIO, with a hand-written backward rule; with a bias or an
    activation, `act(conv(x, w) + b)` as one op (`convolution.fused`: its own rules, and on a
    CPU with the native kernels one call forward and one backward).

    Args:
      x: `(N, H, W, C_in)` or `(H, W, C_in)`.
      w: `(kh, kw, C_in // groups, C_out)`; PyTorch's `Conv2d.weight` (OIHW) is
        `w.transpose(2, 3, 1, 0)`.
      b: optional `(C_out,)`.
      stride, dilation: int or pair, >= 1.
      padding: int, pair `(ph, pw)`, `((top, bottom), (left, right))`, "SAME" or "VALID".
        Ints and pairs may be numpy values (`np.array([1, 2])`, shape (2,) or (2, 2) for
        padding); configuration is static, so a value traced under `jit` is a TypeError.
      groups: feature groups, one int; `groups == C_in` with `C_out = k * C_in` is depthwise.
      algorithm: "auto" (default: measured per shape on a CPU and cached, fcnn.tuning; XLA's
        native convolution when lowered for CUDA, ROCm or TPU), "xla", "phase", "im2col" or
        "taps" (on every platform), or "onednn" where the native part is built (oneDNN's
        kernels on a CPU, float32, 1-D to 3-D): how the forward, dX and dK are computed (see
        fcnn.ops.convolution.algorithms). Same maths, same rule.
      activation: None (the identity) or "relu": `relu(conv(x, w) + b)`, equal to
        `relu(conv2d(x, w, b))` value for value and in every derivative (ReLU's slope is 0 at 0
        and 1 at a NaN, as `fcnn.ops.relu`'s).
      precision: None (XLA's default on the platform), "default", "high" or "highest" (or a
        `jax.lax.Precision`), given to every XLA convolution and product computing the three
        maps, so the backward runs at the forward's precision. On a CPU all are full float32
        (and oneDNN's kernels are); on an NVIDIA GPU from Ampere on, float32 convolutions run
        as TF32 (10-bit mantissa) under None and "default" unless
        `jax_default_matmul_precision` says otherwise: "highest" keeps float32 there.

    Returns:
      `(N, H_out, W_out, C_out)` (or unbatched), `H_out = floor((H + p_t + p_b - F_eff) / s) + 1`.

    Raises:
      ValueError: channel mismatch, wrong rank, bad stride/dilation/padding/groups, window larger
        than the padded input, bias of the wrong length.
      TypeError: non-floating inputs or configuration of the wrong type.
    """
    return _convolve("conv2d", 2, x, w, b, stride, padding, dilation, groups, algorithm,
                     activation, precision)


def conv3d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
           algorithm="auto", activation=None, precision=None):
    """3-D cross-correlation, NDHWC x DHWIO: `conv2d` over three spatial axes (a volume, a clip).

    Args:
      x: `(N, D, H, W, C_in)` or `(D, H, W, C_in)`.
      w: `(kd, kh, kw, C_in // groups, C_out)`; PyTorch's `Conv3d.weight` (OIDHW) is
        `w.transpose(2, 3, 4, 1, 0)`.
      b: optional `(C_out,)`.
      stride, dilation: int or triple, >= 1.
      padding: int, triple `(pd, ph, pw)`, three `(low, high)` pairs, "SAME" or "VALID".
      groups, algorithm, activation: as `conv2d`'s (oneDNN's kernels take NDHWC volumes; with a
        bias or a ReLU the epilogue is XLA's in 3-D).

    Returns:
      `(N, D_out, H_out, W_out, C_out)` (or unbatched), each size as `conv2d`'s.
    """
    return _convolve("conv3d", 3, x, w, b, stride, padding, dilation, groups, algorithm,
                     activation, precision)


def _convolve(op, rank, x, w, b, stride, padding, dilation, groups, algorithm, activation,
              precision):
    x, batched = _checks.image(op, "x", x, rank)
    w = _kernel(op, w, rank)
    cfg = _config(op, x.shape, w.shape, stride, padding, dilation, groups, algorithm, precision)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: `activation` must be one of {ACTIVATIONS}, got {activation!r}.")
    x, w = _checks.same_dtype(x, w)
    if b is None and activation is None:
        y = _conv(x, w, cfg)
    else:
        if b is not None:
            b = check_bias(op, _checks.floating(op, "b", b), w.shape[-1]).astype(x.dtype)
        y = _conv_act(x, w, b, cfg, activation == "relu")
    return y if batched else y[0]


def conv1d_grad_input(g, w, input_shape, *, stride=1, padding=0, dilation=1, groups=1,
                      algorithm="auto", precision=None):
    """dX of `conv1d` (as `conv2d_grad_input`, one spatial axis): `input_shape` is `(N, W,
    C_in)` or `(W, C_in)` like `g`."""
    return _grad_input("conv1d_grad_input", 1, g, w, input_shape, stride, padding, dilation,
                       groups, algorithm, precision)


def conv2d_grad_input(g, w, input_shape, *, stride=1, padding=0, dilation=1, groups=1,
                      algorithm="auto", precision=None):
    """dX of `conv2d`: full convolution of the upstream gradient with the flipped kernel.

    Args:
      g: upstream gradient `(N, H_out, W_out, C_out)` or `(H_out, W_out, C_out)`.
      w: `(kh, kw, C_in // groups, C_out)`.
      input_shape: shape of the forward input, `(N, H, W, C_in)` or `(H, W, C_in)` like `g`:
        a tuple or list of ints (`x.shape`, numpy ints or a 1-D integer array too); N may be 0.
      stride, padding, dilation, groups, algorithm: those of the forward `conv2d`.

    Returns:
      `input_shape`-shaped gradient with respect to the input.
    """
    return _grad_input("conv2d_grad_input", 2, g, w, input_shape, stride, padding, dilation,
                       groups, algorithm, precision)


def conv3d_grad_input(g, w, input_shape, *, stride=1, padding=0, dilation=1, groups=1,
                      algorithm="auto", precision=None):
    """dX of `conv3d` (as `conv2d_grad_input`, three spatial axes): `input_shape` is `(N, D,
    H, W, C_in)` or `(D, H, W, C_in)` like `g`."""
    return _grad_input("conv3d_grad_input", 3, g, w, input_shape, stride, padding, dilation,
                       groups, algorithm, precision)


def _grad_input(op, rank, g, w, input_shape, stride, padding, dilation, groups, algorithm,
                precision):
    g, batched = _checks.image(op, "g", g, rank)
    w = _kernel(op, w, rank)
    full, lows = (rank + 2, (0,) + (1,) * (rank + 1)) if batched else (rank + 1, 1)
    shape = _args.as_shape(input_shape, op, "input_shape", full, minimum=lows)
    x_shape = shape if batched else (g.shape[0], *shape)  # an empty batch, as the forward allows
    cfg = _config(op, x_shape, w.shape, stride, padding, dilation, groups, algorithm, precision)
    _check_g(op, g.shape, algo.out_shape(x_shape, w.shape, cfg))
    g, w = _checks.same_dtype(g, w)
    dx = _conv_dx(g, w, x_shape[1:-1], cfg)
    return dx if batched else dx[0]


def conv1d_grad_kernel(x, g, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1,
                       algorithm="auto", precision=None):
    """dK of `conv1d` (as `conv2d_grad_kernel`, one spatial axis): `kernel_shape` is `(k,
    C_in // groups, C_out)`."""
    return _grad_kernel("conv1d_grad_kernel", 1, x, g, kernel_shape, stride, padding, dilation,
                        groups, algorithm, precision)


def conv2d_grad_kernel(x, g, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1,
                       algorithm="auto", precision=None):
    """dK of `conv2d`: cross-correlation of the input with the upstream gradient.

    Args:
      x: forward input `(N, H, W, C_in)` or `(H, W, C_in)`.
      g: upstream gradient `(N, H_out, W_out, C_out)`, batched like `x`.
      kernel_shape: `(kh, kw, C_in // groups, C_out)`, positive ints (as `input_shape`).
      stride, padding, dilation, groups, algorithm: those of the forward `conv2d`.

    Returns:
      `kernel_shape`-shaped gradient with respect to the kernel.
    """
    return _grad_kernel("conv2d_grad_kernel", 2, x, g, kernel_shape, stride, padding, dilation,
                        groups, algorithm, precision)


def conv3d_grad_kernel(x, g, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1,
                       algorithm="auto", precision=None):
    """dK of `conv3d` (as `conv2d_grad_kernel`, three spatial axes): `kernel_shape` is `(kd,
    kh, kw, C_in // groups, C_out)`."""
    return _grad_kernel("conv3d_grad_kernel", 3, x, g, kernel_shape, stride, padding, dilation,
                        groups, algorithm, precision)


def _grad_kernel(op, rank, x, g, kernel_shape, stride, padding, dilation, groups, algorithm,
                 precision):
    x, batched = _checks.image(op, "x", x, rank)
    g, g_batched = _checks.image(op, "g", g, rank)
    if batched != g_batched:
        raise ValueError(
            f"{op}: `x` and `g` must both be batched or both unbatched, got shapes "
            f"{tuple(x.shape)} and {tuple(g.shape)}."
        )
    k_shape = _args.as_shape(kernel_shape, op, "kernel_shape", rank + 2)
    cfg = _config(op, x.shape, k_shape, stride, padding, dilation, groups, algorithm, precision)
    _check_g(op, g.shape, algo.out_shape(x.shape, k_shape, cfg))
    x, g = _checks.same_dtype(x, g)
    return _conv_dk(x, g, k_shape[:-2], cfg)


# ----------------------------------------------------------------------------- transposed


def conv_transpose1d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, algorithm="auto", precision=None):
    """1-D transposed convolution (`conv_transpose2d` over one spatial axis).

    x: `(N, W, C_in)` or `(W, C_in)`; w: `(k, C_out // groups, C_in)` (PyTorch's
    `ConvTranspose1d.weight` `(C_in, C_out // groups, k)` is `w.transpose(2, 1, 0)`); the output
    is `(N, W_out, C_out)`, `W_out = (W - 1) s - p_lo - p_hi + d (k - 1) + output_padding + 1`.
    """
    return _transposed("conv_transpose1d", 1, x, w, b, stride, padding, output_padding,
                       dilation, groups, algorithm, precision)


def conv_transpose2d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, algorithm="auto", precision=None):
    """2-D transposed convolution ("deconvolution", fractionally strided convolution), PyTorch's
    `ConvTranspose2d`: the gradient of `conv2d` with respect to its input, run forward.

    It is the dX map (`conv2d_grad_input`) of the `conv2d` with the same kernel, stride,
    padding and dilation whose input has the transposed output's size, so its rules are that
    map's: its VJP for `x` is that forward `conv2d`, for `w` its dK with the roles swapped
    (`conv2d_grad_kernel(ct, x)`), and "auto" measures dX's algorithms for it (the phase
    split, im2col's col2im, oneDNN's backward-data kernel, XLA's).

    Args:
      x: `(N, H, W, C_in)` or `(H, W, C_in)`.
      w: `(kh, kw, C_out // groups, C_in)`: the kernel of the `conv2d` it transposes (HWIO of
        a convolution from C_out to C_in channels). PyTorch's `ConvTranspose2d.weight`
        `(C_in, C_out // groups, kh, kw)` is `w.transpose(2, 3, 1, 0)`. lax's
        `conv_transpose(x, w, ..., dimension_numbers=("NHWC", "HWIO", "NHWC"),
        transpose_kernel=True)` takes this `w` as it is (with padding stated on the dilated
        input, see docs/design.md).
      b: optional `(C_out,)`, added after.
      stride, dilation: int or pair, >= 1.
      padding: int, pair `(ph, pw)` or `((top, bottom), (left, right))`: cells removed from
        each side of the full transposed output (PyTorch's `padding`, which is symmetric;
        explicit pairs may differ). Non-negative; no strings.
      output_padding: int or pair, cells added at the high end of each axis, each below the
        stride or the dilation of its axis (PyTorch's rule): it resolves which input size of
        the forward convolution the output is, when several map to the input's size.
      groups: feature groups; C_in and C_out divisible by it.
      algorithm: as `conv2d`'s; names the dX map's algorithm.

    Returns:
      `(N, H_out, W_out, C_out)` (or unbatched),
      `H_out = (H - 1) s - p_top - p_bottom + d (kh - 1) + output_padding + 1`.

    Raises:
      ValueError: channel mismatch, wrong rank, bad stride/dilation/padding/groups, an
        output_padding too large, an output size below 1, a bias of the wrong length.
      TypeError: non-floating inputs or configuration of the wrong type.
    """
    return _transposed("conv_transpose2d", 2, x, w, b, stride, padding, output_padding,
                       dilation, groups, algorithm, precision)


def conv_transpose3d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, algorithm="auto", precision=None):
    """3-D transposed convolution (`conv_transpose2d` over three spatial axes).

    x: `(N, D, H, W, C_in)` or unbatched; w: `(kd, kh, kw, C_out // groups, C_in)` (PyTorch's
    `ConvTranspose3d.weight` `(C_in, C_out // groups, kd, kh, kw)` is
    `w.transpose(2, 3, 4, 1, 0)`); each output size as `conv_transpose2d`'s.
    """
    return _transposed("conv_transpose3d", 3, x, w, b, stride, padding, output_padding,
                       dilation, groups, algorithm, precision)


def transposed_geometry(op, rank, stride, padding, output_padding, dilation):
    """A transposed convolution's `(stride, pads, dilation, output_padding)`, one entry per
    axis, validated (the op and the layers both use it): padding as ints or (low, high) pairs,
    no strings; output_padding below the stride or the dilation of its axis (PyTorch's rule)."""
    if isinstance(_args.static(padding, op, "padding"), str):
        raise ValueError(f"{op}: `padding` must be an int, one int per axis or (low, high) "
                         f"pairs per axis; strings are for the forward convolution, got "
                         f"{padding!r}.")
    pads = _args.padding_form(padding, op, rank)
    stride = _args.as_tuple(stride, op, "stride", rank)
    dilation = _args.as_tuple(dilation, op, "dilation", rank)
    extra = _args.as_tuple(output_padding, op, "output_padding", rank, minimum=0)
    for e, s, d in zip(extra, stride, dilation):
        if e >= max(s, d):
            raise ValueError(f"{op}: `output_padding` must be smaller than the stride or the "
                             f"dilation of its axis, got {extra} with stride {stride} and "
                             f"dilation {dilation}.")
    return stride, pads, dilation, extra


def transposed_size(size, k, stride, pads, output_padding, dilation):
    """The transposed convolution's output size along one axis."""
    return (size - 1) * stride - pads[0] - pads[1] + dilation * (k - 1) + output_padding + 1


def _transposed(op, rank, x, w, b, stride, padding, output_padding, dilation, groups,
                algorithm, precision):
    x, batched = _checks.image(op, "x", x, rank)
    w = _kernel(op, w, rank, transposed=True)
    stride_, pads, dilation_, extra = transposed_geometry(op, rank, stride, padding,
                                                          output_padding, dilation)
    cin, groups = x.shape[-1], _args.as_int(groups, op, "groups", minimum=1)
    if cin % groups:
        raise ValueError(f"{op}: `groups` (={groups}) must divide the input channels (={cin}).")
    if w.shape[-1] != cin:
        raise ValueError(f"{op}: x has {cin} channels but w expects {w.shape[-1]} (w.shape[-1]; "
                         f"w is (*k, C_out // groups, C_in)).")
    k_sp = w.shape[:-2]
    out = tuple(transposed_size(n, k, s, p, e, d)
                for n, k, s, p, e, d in zip(x.shape[1:-1], k_sp, stride_, pads, extra, dilation_))
    if min(out) < 1:
        raise ValueError(f"{op}: the output would have size {out} (input {x.shape[1:-1]}, "
                         f"kernel {k_sp}, padding {pads}): reduce the padding.")
    # the forward convolution it transposes: padding (p_lo, p_hi - s * floor(e / s)); where
    # that high side is negative (output_padding >= stride, possible when the dilation is
    # larger) the forward reads none of the last cells: run it on the shorter input and append
    # the zeros
    highs = tuple(hi - s * (e // s) for (_, hi), s, e in zip(pads, stride_, extra))
    cut = tuple(max(0, -h) for h in highs)
    fwd_pads = tuple((lo, max(h, 0)) for (lo, _), h in zip(pads, highs))
    in_sizes = tuple(n - c for n, c in zip(out, cut))
    x_shape = (x.shape[0], *in_sizes, w.shape[-2] * groups)
    cfg = _config(op, x_shape, w.shape, stride_, fwd_pads, dilation_, groups, algorithm,
                  precision)
    x, w = _checks.same_dtype(x, w)
    y = _conv_dx(x, w, in_sizes, cfg)
    if any(cut):
        y = _pad_high(y, cut)
    if b is not None:
        b = check_bias(op, _checks.floating(op, "b", b), y.shape[-1]).astype(y.dtype)
        y = bias_add(y, b)
    return y if batched else y[0]


def _pad_high(y, cut):
    import jax.numpy as jnp

    return jnp.pad(y, ((0, 0), *((0, c) for c in cut), (0, 0)))


# ----------------------------------------------------------------------------- validation


def _kernel(op, w, rank=2, transposed=False):
    w = _checks.floating(op, "w", w)
    if w.ndim != rank + 2:
        spatial = _checks.layout(rank)[1:-4]
        channels = "C_out // groups, C_in" if transposed else "C_in // groups, C_out"
        raise ValueError(
            f"{op}: `w` must have rank {rank + 2} ({spatial}, {channels}), got shape "
            f"{tuple(w.shape)}."
        )
    return w


def _config(op, x_shape, w_shape, stride, padding, dilation, groups, algorithm,
            precision=None) -> ConvConfig:
    """Validate shapes and normalise configuration; `x_shape` is the batched channels-last
    input's, `(N, *spatial, C_in)`."""
    rank = len(x_shape) - 2
    if algorithm == "onednn" and "onednn" not in algo.ALGORITHMS:
        raise ValueError(f"{op}: `algorithm` 'onednn' is unavailable: {onednn.WHY_NOT}.")
    if algorithm == "onednn" and rank not in onednn.RANKS:
        raise ValueError(f"{op}: `algorithm` 'onednn' takes 1-D, 2-D and 3-D convolutions; "
                         f"this is {rank}-D.")
    if algorithm != "auto" and algorithm not in algo.ALGORITHMS:
        raise ValueError(
            f"{op}: `algorithm` must be 'auto' or one of {algo.ALGORITHMS}, got {algorithm!r}."
        )
    stride = _args.as_tuple(stride, op, "stride", rank)
    dilation = _args.as_tuple(dilation, op, "dilation", rank)
    groups = _args.as_int(groups, op, "groups", minimum=1)
    k_sp, (cig, cout) = w_shape[:-2], w_shape[-2:]
    cin = x_shape[-1]
    if cin % groups or cout % groups:
        raise ValueError(
            f"{op}: `groups` (={groups}) must divide both the input channels (={cin}) and the "
            f"output channels (={cout})."
        )
    if cin != cig * groups:
        raise ValueError(
            f"{op}: x has {cin} channels but w expects {cig * groups} "
            f"(w.shape[-2] * groups = {cig} * {groups})."
        )
    windows = tuple(_args.effective_window(k, d) for k, d in zip(k_sp, dilation))
    pads = _args.as_padding(padding, op, x_shape[1:-1], windows, stride)
    _args.check_fits(op, x_shape[1:-1], windows, pads, "kernel")
    chosen = (algo.choose(w_shape, groups, x_shape[1:-1]) if algorithm == "auto"
              else (algorithm,) * 3)
    return ConvConfig(stride, pads, dilation, groups, chosen, auto=algorithm == "auto",
                      precision=_args.as_precision(precision, op))


def _check_g(op, g_shape, expected):
    if tuple(g_shape) != tuple(expected):
        raise ValueError(
            f"{op}: `g` must have the forward output's shape {expected} for this input and "
            f"configuration, got {tuple(g_shape)}."
        )


def _primitives():
    """The primitives' module, imported when the op is first traced under the primitive binding
    (importing it registers the rules with JAX)."""
    from fcnn.ops.convolution import primitives

    return primitives


def _fused():
    """The primitives' module, imported when the op is first traced under the primitive binding
    (importing it registers the rules with JAX)."""
    from fcnn.ops.convolution import fused

    return fused


# ----------------------------------------------------------------------------- the three maps
# Each map is bound by the current binding (`_binding`): JAX primitives with hand-written JVP,
# transpose and batching rules (`convolution.primitives`, imported on first use), or the
# custom_vjp functions (`convolution.custom_vjp`). The rules are the same maths; the algorithms
# computing each map are `convolution.algorithms`'.
_conv = _binding.bound(lambda *a: _primitives().conv(*a), V.conv)
_conv_dx = _binding.bound(lambda *a: _primitives().conv_dx(*a), V.conv_dx)
_conv_dk = _binding.bound(lambda *a: _primitives().conv_dk(*a), V.conv_dk)
_conv_act = _binding.bound(lambda *a: _fused().conv_act(*a), V.conv_act)
