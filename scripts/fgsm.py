"""FGSM adversarial examples (Goodfellow, Shlens & Szegedy 2015) on a trained LeNet-5.

Trains LeNet-5 on the embedded MNIST with the main job's recipe (`fcnn.train.fit`, --epochs
epochs), or loads --checkpoint (a checkpoint.npz that scripts/train.py wrote for lenet5), then
perturbs each test image by `eps * sign(d loss / d x)` — the input gradient comes through the
hand-written dX rule of every conv — and reports accuracy per epsilon, with a PNG grid of
originals, perturbations and adversarial images.

    python scripts/fgsm.py [--epochs 10] [--eps 0 0.05 0.1 0.2] [--out fgsm.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import data, ops, train  # noqa: E402


def fgsm(model, params, x, y, eps):
    """Adversarial images: `clip(x + eps * sign(grad_x loss), 0, 1)`."""
    grad = jax.grad(lambda x: ops.softmax_cross_entropy(model.apply(params, x), y))(x)
    return jnp.clip(x + eps * jnp.sign(grad), 0.0, 1.0)


def trained_lenet(epochs, checkpoint_path=None):
    """LeNet-5 and its parameters: from a scripts/train.py checkpoint, or trained now with the
    main job's recipe for `epochs` epochs."""
    model = models.lenet5()
    if checkpoint_path is not None:
        return model, train.load_params(checkpoint_path, model)
    return model, train.fit(model, data.load(), train.Recipe(epochs=epochs)).params


def grid(model, params, ds, attack, predict, eps, path, n=8):
    """Rows: originals, perturbations (scaled to [0, 1]), adversarials; titles: predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = ds.test_images[:n].astype(np.float32) / 255
    y = ds.test_labels[:n]
    adv = np.asarray(attack(x, y, eps))
    rows = [(x, predict(x), "original"), ((adv - x) / (2 * eps) + 0.5 if eps else adv - x, None,
                                          f"perturbation (eps {eps})"),
            (adv, predict(adv), "adversarial")]
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6))
    for r, (images, preds, label) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c, ..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if preds is not None:
                ax.set_title(f"{int(preds[c])}", fontsize=9,
                             color="C2" if int(preds[c]) == int(y[c]) else "C3")
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="training epochs (if no checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="a scripts/train.py checkpoint.npz (lenet5)")
    p.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
    p.add_argument("--out", type=Path, default=Path("fgsm.png"))
    args = p.parse_args(argv)
    ds = data.load()
    model, params = trained_lenet(args.epochs, args.checkpoint)
    attack = jax.jit(lambda x, y, eps: fgsm(model, params, x, y, eps))
    predict = jax.jit(lambda x: jnp.argmax(model.apply(params, x), -1))
    results = {}
    for eps in args.eps:
        correct = 0
        for x, y in data.batches(ds.test_images, ds.test_labels, 1000, shuffle=False):
            correct += int(jnp.sum(predict(attack(x, y, eps)) == y))
        results[eps] = correct / len(ds.test_labels)
        print(f"eps {eps:.2f}: test accuracy {100 * results[eps]:.2f}%")
    grid(model, params, ds, attack, predict, max(args.eps), args.out)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
