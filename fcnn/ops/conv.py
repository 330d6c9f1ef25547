"""2-D convolution (cross-correlation) and its two gradients, each with a hand-written rule.

Three linear maps close under differentiation, so each rule is written with the other two:

    conv(x, w)    = y     y[n,i,j,o] = sum_{a,b,c} x[n, i*s + a*d, j*s + b*d, c] w[a,b,c,o]
    conv_dx(g, w) = dX    full convolution of g with the kernel (flipped, in/out swapped)
    conv_dk(x, g) = dK    cross-correlation of the input with the upstream gradient

    d conv   : dx = conv_dx(g, w),   dw = conv_dk(x, g)
    d conv_dx: dg = conv(ct, w),     dw = conv_dk(ct, g)
    d conv_dk: dx = conv_dx(g, ct),  dg = conv(x, ct)

so ``grad(grad(f))`` runs through hand-written rules at every order. How each map is computed
(XLA's convolution, phase-split strided dX, im2col, taps) is chosen per shape in
_conv_algorithms (docs/design.md, "Convolution algorithms and how auto chooses").
"""

from __future__ import annotations

from typing import NamedTuple

from fcnn import _args
from fcnn.ops import _binding, _checks, onednn
from fcnn.ops import _conv_algorithms as algo
from fcnn.ops import _conv_vjp as V
from fcnn.ops._bias import check_bias


class ConvConfig(NamedTuple):
    """Static, hashable configuration of a convolution (explicit padding)."""

    stride: _args.Pair
    padding: _args.Padding
    dilation: _args.Pair
    groups: int
    algorithm: tuple[str, str, str]  # resolved for (forward, dX, dK), from algo.ALGORITHMS
    # "auto": `algorithm` is the CPU's measured choice; other platforms run XLA's convolution
    auto: bool = False


# ----------------------------------------------------------------------------- public wrappers


ACTIVATIONS = (None, "relu")


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
           algorithm="auto", activation=None):
    """2-D cross-correlation, NHWC x HWIO, with a hand-written backward rule; with a bias or an
    activation, `act(conv(x, w) + b)` as one op (`_conv_act`: its own rules, and on a CPU with
    the native kernels one call forward and one backward).

    Args:
      x: `(N, H, W, C_in)` or `(H, W, C_in)`.
      w: `(kh, kw, C_in // groups, C_out)`.
      b: optional `(C_out,)`.
      stride, dilation: int or pair, >= 1.
      padding: int, pair `(ph, pw)`, `((top, bottom), (left, right))`, "SAME" or "VALID".
        Ints and pairs may be numpy values (`np.array([1, 2])`, shape (2,) or (2, 2) for
        padding); configuration is static, so a value traced under `jit` is a TypeError.
      groups: feature groups, one int; `groups == C_in` with `C_out = k * C_in` is depthwise.
      algorithm: "auto" (default: measured per shape on a CPU and cached, fcnn.tuning; XLA's
        native convolution when lowered for CUDA, ROCm or TPU), "xla", "phase", "im2col" or
        "taps" (on every platform), or "onednn" where the native part is built (oneDNN's
        kernels on a CPU, float32): how the forward, dX and dK are computed (see
        fcnn.ops._conv_algorithms). Same maths, same rule.
      activation: None (the identity) or "relu": `relu(conv(x, w) + b)`, equal to
        `relu(conv2d(x, w, b))` value for value and in every derivative (ReLU's slope is 0 at 0
        and 1 at a NaN, as `fcnn.ops.relu`'s).

    Returns:
      `(N, H_out, W_out, C_out)` (or unbatched), `H_out = floor((H + p_t + p_b - F_eff) / s) + 1`.

    Raises:
      ValueError: channel mismatch, wrong rank, bad stride/dilation/padding/groups, window larger
        than the padded input, bias of the wrong length.
      TypeError: non-floating inputs or configuration of the wrong type.
    """
    op = "conv2d"
    x, batched = _checks.image(op, "x", x)
    w = _kernel(op, w)
    cfg = _config(op, x.shape, w.shape, stride, padding, dilation, groups, algorithm)
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: `activation` must be one of {ACTIVATIONS}, got {activation!r}.")
    x, w = _checks.same_dtype(x, w)
    if b is None and activation is None:
        y = _conv(x, w, cfg)
    else:
        if b is not None:
            b = check_bias(op, _checks.floating(op, "b", b), w.shape[3]).astype(x.dtype)
        y = _conv_act(x, w, b, cfg, activation == "relu")
    return y if batched else y[0]


def conv2d_grad_input(g, w, input_shape, *, stride=1, padding=0, dilation=1, groups=1,
                      algorithm="auto"):
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
    op = "conv2d_grad_input"
    g, batched = _checks.image(op, "g", g)
    w = _kernel(op, w)
    rank, lows = (4, (0, 1, 1, 1)) if batched else (3, 1)  # an empty batch, as `conv2d` allows
    shape = _args.as_shape(input_shape, op, "input_shape", rank, minimum=lows)
    x_shape = shape if batched else (g.shape[0], *shape)
    cfg = _config(op, x_shape, w.shape, stride, padding, dilation, groups, algorithm)
    _check_g(op, g.shape, _out_shape(x_shape, w.shape, cfg))
    g, w = _checks.same_dtype(g, w)
    dx = _conv_dx(g, w, x_shape[1:3], cfg)
    return dx if batched else dx[0]


def conv2d_grad_kernel(x, g, kernel_shape, *, stride=1, padding=0, dilation=1, groups=1,
                       algorithm="auto"):
    """dK of `conv2d`: cross-correlation of the input with the upstream gradient.

    Args:
      x: forward input `(N, H, W, C_in)` or `(H, W, C_in)`.
      g: upstream gradient `(N, H_out, W_out, C_out)`, batched like `x`.
      kernel_shape: `(kh, kw, C_in // groups, C_out)`, positive ints (as `input_shape`).
      stride, padding, dilation, groups, algorithm: those of the forward `conv2d`.

    Returns:
      `kernel_shape`-shaped gradient with respect to the kernel.
    """
    op = "conv2d_grad_kernel"
    x, batched = _checks.image(op, "x", x)
    g, g_batched = _checks.image(op, "g", g)
    if batched != g_batched:
        raise ValueError(
            f"{op}: `x` and `g` must both be batched or both unbatched, got shapes "
            f"{tuple(x.shape)} and {tuple(g.shape)}."
        )
    k_shape = _args.as_shape(kernel_shape, op, "kernel_shape", 4)
    cfg = _config(op, x.shape, k_shape, stride, padding, dilation, groups, algorithm)
    _check_g(op, g.shape, _out_shape(x.shape, k_shape, cfg))
    x, g = _checks.same_dtype(x, g)
    return _conv_dk(x, g, k_shape[:2], cfg)


# ----------------------------------------------------------------------------- validation


def _kernel(op, w):
    w = _checks.floating(op, "w", w)
    if w.ndim != 4:
        raise ValueError(
            f"{op}: `w` must have rank 4 (kh, kw, C_in // groups, C_out), got shape "
            f"{tuple(w.shape)}."
        )
    return w


def _config(op, x_shape, w_shape, stride, padding, dilation, groups, algorithm) -> ConvConfig:
    """Validate shapes and normalise configuration; `x_shape` is batched NHWC."""
    if algorithm == "onednn" and "onednn" not in algo.ALGORITHMS:
        raise ValueError(f"{op}: `algorithm` 'onednn' is unavailable: {onednn.WHY_NOT}.")
    if algorithm != "auto" and algorithm not in algo.ALGORITHMS:
        raise ValueError(
            f"{op}: `algorithm` must be 'auto' or one of {algo.ALGORITHMS}, got {algorithm!r}."
        )
    stride = _args.as_pair(stride, op, "stride")
    dilation = _args.as_pair(dilation, op, "dilation")
    groups = _args.as_int(groups, op, "groups", minimum=1)
    kh, kw, cig, cout = w_shape
    cin = x_shape[3]
    if cin % groups or cout % groups:
        raise ValueError(
            f"{op}: `groups` (={groups}) must divide both the input channels (={cin}) and the "
            f"output channels (={cout})."
        )
    if cin != cig * groups:
        raise ValueError(
            f"{op}: x has {cin} channels but w expects {cig * groups} "
            f"(w.shape[2] * groups = {cig} * {groups})."
        )
    windows = (_args.effective_window(kh, dilation[0]), _args.effective_window(kw, dilation[1]))
    pads = _args.as_padding(padding, op, x_shape[1:3], windows, stride)
    _args.check_fits(op, x_shape[1:3], windows, pads, "kernel")
    chosen = (algo.choose(w_shape, groups, x_shape[1:3]) if algorithm == "auto"
              else (algorithm,) * 3)
    return ConvConfig(stride, pads, dilation, groups, chosen, auto=algorithm == "auto")


def _out_shape(x_shape, w_shape, cfg):
    hw = (
        _args.output_size(n, _args.effective_window(k, d), s, p)
        for n, k, d, s, p in zip(x_shape[1:3], w_shape[:2], cfg.dilation, cfg.stride, cfg.padding)
    )
    return (x_shape[0], *hw, w_shape[3])


def _check_g(op, g_shape, expected):
    if tuple(g_shape) != tuple(expected):
        raise ValueError(
            f"{op}: `g` must have the forward output's shape {expected} for this input and "
            f"configuration, got {tuple(g_shape)}."
        )


# ----------------------------------------------------------------------------- the three maps
# Each map is bound by the current binding (`_binding`): JAX primitives with hand-written JVP,
# transpose and batching rules (`_conv_primitives`), or the custom_vjp functions (`_conv_vjp`). The
# rules are the same maths; the algorithms computing each map are `_conv_algorithms`'.
_conv = _binding.bound(lambda *a: _binding._conv_primitives.conv(*a), V.conv)
_conv_dx = _binding.bound(lambda *a: _binding._conv_primitives.conv_dx(*a), V.conv_dx)
_conv_dk = _binding.bound(lambda *a: _binding._conv_primitives.conv_dk(*a), V.conv_dk)
_conv_act = _binding.bound(lambda *a: _binding._conv_act.conv_act(*a), V.conv_act)
