"""Looking inside LeNet-5: first-layer filters, feature maps, fixed kernels, saliency (PNGs).

- filters.png: the 6 learned 5x5 kernels of the first conv layer;
- feature_maps.png: one test digit through each conv layer (after ReLU);
- kernels.png: the classic fixed-kernel experiment — fixed kernels (identity, sharpen, box blur,
  edge detect, Sobel x/y) applied to an MNIST digit with `ops.conv2d`;
- saliency.png: |d class score / d input| (the input gradient through the hand-written rules).

    python scripts/visualize.py [--epochs 5] [--checkpoint ckpt/checkpoint.npz] [--out-dir viz]
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

KERNELS = {  # the textbook 3x3 image-processing kernels
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "box blur": [[1 / 9] * 3] * 3,
    "edge detect": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    "sobel x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "sobel y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
}


def fixed_kernels(image):
    """Every KERNELS entry applied to one (H, W, 1) image: `{name: (H, W)}` ("SAME" padding)."""
    w = jnp.stack([jnp.asarray(k, jnp.float32) for k in KERNELS.values()], -1)[:, :, None, :]
    out = ops.conv2d(jnp.asarray(image, jnp.float32), w, padding="SAME")
    return {name: np.asarray(out[..., i]) for i, name in enumerate(KERNELS)}


def saliency(model, params, x, label):
    """|d logit_label / d x| for one (H, W, C) image, max over channels: `(H, W)`."""
    grad = jax.grad(lambda x: model.apply(params, x)[label])(x)
    return jnp.max(jnp.abs(grad), axis=-1)


def _panel(path, images, titles, rows, cmap="gray", suptitle=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = -(-len(images) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap=cmap)
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="training epochs (if no checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="a scripts/train.py checkpoint.npz (lenet5)")
    p.add_argument("--out-dir", type=Path, default=Path("viz"))
    args = p.parse_args(argv)
    ds = data.load()
    model = models.lenet5()
    params = (train.load_params(args.checkpoint, model) if args.checkpoint else
              train.fit(model, ds, train.Recipe(epochs=args.epochs)).params)
    image = ds.test_images[0].astype(np.float32) / 255
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name, *panel_args, **kw):
        _panel(args.out_dir / name, *panel_args, **kw)
        written.append(args.out_dir / name)

    w1 = np.asarray(params[0]["w"])  # (5, 5, 1, 6)
    save("filters.png", [w1[:, :, 0, i] for i in range(6)], [f"filter {i}" for i in range(6)],
         1, cmap="RdBu_r", suptitle="first-layer 5x5 filters")
    layers = model.info.children
    h, maps, titles, conv = jnp.asarray(image), [], [], 0
    for i, (layer, p_) in enumerate(zip(layers, params)):
        h = layer.apply(p_, h)
        if layer.info.kind == "ReLU" and layers[i - 1].info.kind == "Conv2D":
            conv += 1
            maps += [np.asarray(h[..., c]) for c in range(h.shape[-1])]
            titles += [f"conv{conv} #{c}" for c in range(h.shape[-1])]
        if layer.info.kind == "Flatten":
            break
    save("feature_maps.png", [image[..., 0], *maps], ["input", *titles], 4,
         suptitle=f"digit {ds.test_labels[0]} through the conv layers (after ReLU)")
    filtered = fixed_kernels(image)
    save("kernels.png", list(filtered.values()), list(filtered), 2,
         suptitle="fixed kernels applied with ops.conv2d")
    xs = ds.test_images[:6].astype(np.float32) / 255
    sal = [np.asarray(saliency(model, params, jnp.asarray(x), int(y)))
           for x, y in zip(xs, ds.test_labels[:6])]
    save("saliency.png", [x[..., 0] for x in xs] + sal,
         [f"digit {y}" for y in ds.test_labels[:6]] + ["|d score / d x|"] * 6, 2, cmap="magma")
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
