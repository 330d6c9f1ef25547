"""Shape arithmetic of conv nets: output sizes (with a strict tiling check) and receptive fields."""

from __future__ import annotations

from fcnn import _args


def conv_output_size(size: int, kernel: int, stride: int = 1, padding=0, dilation: int = 1,
                     strict: bool = False) -> int:
    """`floor((W + p_lo + p_hi - F_eff) / S) + 1` along one dimension (the CS231n notes'
    `(W - F + 2P) / S + 1`, cs231n.github.io/convolutional-networks).

    Args:
      size, kernel, stride, dilation: ints (>= 1).
      padding: int (both sides), `(lo, hi)`, "SAME" or "VALID".
      strict: raise instead of flooring when the window does not tile the padded input.

    Raises:
      ValueError: bad arguments, a window larger than the padded input, or (strict) a stride
        that leaves cells out, naming the paddings that would fit.
    """
    op = "conv_output_size"
    size, kernel, stride, dilation = (
        _args.as_int(v, op, n, minimum=1)
        for v, n in ((size, "size"), (kernel, "kernel"), (stride, "stride"), (dilation, "dilation"))
    )
    window = _args.effective_window(kernel, dilation)
    padding = _args.static(padding, op, "padding")  # a numpy (lo, hi) is a tuple from here
    if isinstance(padding, tuple):
        padding = (padding, (0, 0))
    pad = _args.as_padding(padding, op, (size, 1), (window, 1), (stride, 1))[0]
    _args.check_fits(op, (size, 1), (window, 1), (pad, (0, 0)))
    r = _args.remainder(size, window, stride, pad)
    if strict and r:
        total = sum(pad)
        fits = [total + (stride - r) + i * stride for i in range(3)]
        raise ValueError(
            f"{op}: a {window}-wide window with stride {stride} does not tile an input of {size} "
            f"with padding {pad}: ({size} + {total} - {window}) / {stride} + 1 = "
            f"{(size + total - window) / stride + 1:.4g} is not an integer, so {r} cell(s) "
            f"would be dropped. Total paddings that fit: {', '.join(map(str, fits))}, ... "
            f"(or a stride dividing {size + total - window})."
        )
    return _args.output_size(size, window, stride, pad)


def receptive_field(layer, input_shape) -> tuple[int, ...]:
    """Receptive field, in input cells per spatial axis (`(h, w)` for an image `(H, W, C)`, one
    number for a signal `(L, C)`, three for a volume), of one output unit of `layer` on an
    input of `input_shape`. After a Flatten or Dense every unit sees the whole input; a user's
    bare `Layer(init, apply)` is taken not to grow it; after upsampling it is rounded up to
    whole cells (see `fcnn.summary`)."""
    from fcnn.summary import summary  # the walk lives there; one source of truth

    return summary(layer, input_shape).rows[-1].receptive_field
