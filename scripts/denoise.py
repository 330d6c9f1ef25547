"""A U-Net (Ronneberger et al. 2015; `models.unet`) trained to denoise MNIST digits: the
embedded training digits with Gaussian noise added (std `--noise` of the [0, 1] range), the
clean digit as the target, mean squared error, Adam. Every convolution's backward and the
up-convolutions (transposed convolutions, fcnn's dX map run forward) run fcnn's rules.

Reports the peak signal-to-noise ratio (PSNR, dB, the images in [0, 1]) of the noisy and the
denoised test images, and writes a grid of clean, noisy and denoised digits.

    python scripts/denoise.py [--steps 600] [--noise 0.5] [--out denoise.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import data, ops  # noqa: E402


def noisy(key, x, noise):
    return x + noise * jax.random.normal(key, x.shape, x.dtype)


def psnr(x, y):
    """PSNR in dB of `x` against the clean `y`, images in [0, 1], averaged over images."""
    mse = jnp.mean((x - y) ** 2, axis=tuple(range(1, x.ndim)))
    return float(jnp.mean(10 * jnp.log10(1.0 / mse)))


def train(steps=600, noise=0.5, batch=64, lr=2e-3, width=16, seed=0, log=print):
    """(model, params, state, test report): the U-Net trained for `steps` Adam steps."""
    ds = data.load()
    x_train = jnp.asarray(ds.train_images, jnp.float32) / 255
    model = models.unet(out_channels=1, width=width)
    key = jax.random.key(seed)
    params, _ = model.init(key, (28, 28, 1))
    state = model.init_state((28, 28, 1))
    opt = optax.adam(lr)
    opt_state = opt.init(params)

    def loss(params, state, x, key):
        y, state = model.apply_with_state(params, state, noisy(key, x, noise), train=True)
        return ops.mse(y, x), state

    @jax.jit
    def step(params, state, opt_state, x, key):
        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params, state, x, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, value

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(steps):
        idx = rng.choice(x_train.shape[0], batch, replace=False)
        key, sub = jax.random.split(key)
        params, state, opt_state, value = step(params, state, opt_state, x_train[idx], sub)
        if log and (i + 1) % max(1, steps // 6) == 0:
            log(f"step {i + 1:5d}  train mse {float(value):.4f}")
    seconds = time.perf_counter() - start
    report = evaluate(model, params, state, ds, noise, seed)
    report["seconds"] = seconds
    return model, params, state, report


def evaluate(model, params, state, ds, noise, seed=0, n=1000):
    """PSNR of the noisy and the denoised first `n` test images (a fixed noise draw)."""
    x = jnp.asarray(ds.test_images[:n], jnp.float32) / 255
    xn = noisy(jax.random.key(seed + 1), x, noise)
    y = jax.jit(lambda p, s, x: model.apply_with_state(p, s, x)[0])(params, state, xn)
    return {"psnr_noisy": psnr(xn, x), "psnr_denoised": psnr(y, x),
            "psnr_denoised_clipped": psnr(jnp.clip(y, 0, 1), x)}


def picture(model, params, state, noise, path, n=8, seed=0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = data.load()
    x = jnp.asarray(ds.test_images[:n], jnp.float32) / 255
    xn = noisy(jax.random.key(seed + 1), x, noise)
    y = model.apply_with_state(params, state, xn)[0]
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2))
    for r, (images, label) in enumerate(((x, "clean"), (xn, f"noisy (std {noise})"),
                                         (y, "denoised (U-Net)"))):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.clip(np.asarray(images[c, ..., 0]), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="denoise.png")
    args = parser.parse_args(argv)
    model, params, state, report = train(args.steps, args.noise, width=args.width,
                                         seed=args.seed)
    print(f"test PSNR: noisy {report['psnr_noisy']:.2f} dB -> denoised "
          f"{report['psnr_denoised']:.2f} dB ({report['psnr_denoised_clipped']:.2f} clipped to "
          f"[0, 1]); {args.steps} steps in {report['seconds']:.1f} s")
    picture(model, params, state, args.noise, args.out, seed=args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
