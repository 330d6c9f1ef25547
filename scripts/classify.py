"""Classify images with torchvision's pretrained ImageNet weights, offline.

Loads a torchvision state dict (a .safetensors file, or a .pth through torch when installed)
into fcnn's counterpart of the network (`fcnn.weights.load`), runs each image through
torchvision's evaluation transform (`fcnn.data.preprocess`: resize 256, centre crop 224,
normalise) and prints its top classes: probability, class index and ImageNet name.

    python scripts/classify.py --weights resnet50.safetensors [--model resnet50] [--top 5]
        IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcnn import weights  # noqa: E402
from fcnn.data import CLASSES, preprocess  # noqa: E402


def softmax(logits) -> np.ndarray:
    """Probabilities from one row of logits, in float64."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def top_lines(probs, k: int) -> list[str]:
    """`  {prob:6.2%}  {index:4d}  {name}` for the `k` most probable classes, most probable
    first (ties: the lower index first). Names are ImageNet's when there are 1000 classes."""
    order = np.argsort(-probs, kind="stable")[:k]
    names = CLASSES if len(probs) == len(CLASSES) else None
    return [f"  {probs[i]:6.2%}  {int(i):4d}  {names[i] if names else ''}".rstrip()
            for i in order]


def classify(model, params, state, paths, top: int = 5) -> dict[str, list[tuple[int, float]]]:
    """Print each image's path and its `top` classes; return path -> [(index, probability)]."""
    forward = jax.jit(lambda p, s, x: model.apply_with_state(p, s, x, train=False)[0])
    results = {}
    for path in paths:
        x = preprocess(path)
        probs = softmax(np.asarray(forward(params, state, x[None]))[0])
        print(path)
        for line in top_lines(probs, top):
            print(line)
        order = np.argsort(-probs, kind="stable")[:top]
        results[str(path)] = [(int(i), float(probs[i])) for i in order]
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True,
                   help="torchvision state dict of --model (.safetensors, or .pth with torch)")
    p.add_argument("--model", default="resnet50", choices=sorted(weights.SUPPORTED))
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    model, params, state = weights.load(args.model, args.weights)
    return classify(model, params, state, args.images, args.top)


if __name__ == "__main__":
    main()
