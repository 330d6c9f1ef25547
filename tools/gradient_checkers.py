"""Which gradient checkers catch a rule that is wrong by a relative error delta?

A convolution of a (2, 8, 8, 3) input with a (3, 3, 3, 4) kernel whose kernel derivative is
scaled by 1 + delta, checked by JAX's `jax.test_util.check_grads` (float32 and float64
arguments), PyTorch's `torch.autograd.gradcheck` (float64; skipped when torch is not
installed) and `fcnn.testing.check_op` (float32 and float64 arguments). Prints a markdown
table (docs/correctness.md holds one, with the machine and versions).

    python tools/gradient_checkers.py [--deltas 0 1e-2 1e-3 1e-4 1e-5 3e-6 1e-6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcnn import reference  # noqa: E402
from fcnn.testing import check_op  # noqa: E402

X_SHAPE, W_SHAPE = (2, 8, 8, 3), (3, 3, 3, 4)  # NHWC, HWIO


def wrong_conv(delta: float):
    """conv2d whose JVP (hence VJP) in the kernel is scaled by 1 + delta."""

    @jax.custom_jvp
    def conv(x, w):
        return reference.conv2d(x, w)

    @conv.defjvp
    def rule(primals, tangents):
        (x, w), (dx, dw) = primals, tangents
        return conv(x, w), reference.conv2d(dx, w) + (1 + delta) * reference.conv2d(x, dw)

    return conv


def jax_check_grads(delta: float, dtype) -> str:
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(s), dtype) for s in (X_SHAPE, W_SHAPE))
    try:
        check_grads(wrong_conv(delta), (x, w), order=1, modes=("fwd", "rev"))
    except AssertionError:
        return "fails"
    return "passes"


def fcnn_check_op(delta: float, dtype) -> str:
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(s), dtype) for s in (X_SHAPE, W_SHAPE))
    report = check_op(wrong_conv(delta), x, w, order=1, jit=False, vmap=False,
                      raise_on_failure=False)
    return "passes" if report.passed else "fails"


def torch_gradcheck(delta: float) -> str:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return "(no torch)"

    class Conv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return F.conv2d(x, w)

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return (torch.nn.grad.conv2d_input(x.shape, w, g),
                    (1 + delta) * torch.nn.grad.conv2d_weight(x, w.shape, g))

    gen = torch.Generator().manual_seed(0)
    nchw = (X_SHAPE[0], X_SHAPE[3], *X_SHAPE[1:3])
    oihw = (W_SHAPE[3], W_SHAPE[2], *W_SHAPE[:2])
    x = torch.randn(nchw, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(oihw, generator=gen, dtype=torch.float64, requires_grad=True)
    ok = torch.autograd.gradcheck(Conv.apply, (x, w), raise_exception=False)
    return "passes" if ok else "fails"


def rows(deltas):
    """One row per delta: (delta, check_grads f32, f64, gradcheck f64, check_op f32, f64)."""
    with jax.enable_x64(True):
        return [(d, jax_check_grads(d, jnp.float32), jax_check_grads(d, jnp.float64),
                 torch_gradcheck(d), fcnn_check_op(d, jnp.float32),
                 fcnn_check_op(d, jnp.float64)) for d in deltas]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--deltas", type=float, nargs="+",
                   default=[0, 1e-2, 1e-3, 1e-4, 1e-5, 3e-6, 1e-6])
    args = p.parse_args(argv)
    table = rows(args.deltas)
    print("| delta | check_grads float32 | check_grads float64 | gradcheck float64 | "
          "check_op float32 | check_op float64 |")
    print("| ---: | --- | --- | --- | --- | --- |")
    for d, *cells in table:
        print(f"| {d:g} | " + " | ".join(cells) + " |")
    return table


if __name__ == "__main__":
    main()
