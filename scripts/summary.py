"""Print the summary table of a model in models/ (shapes, parameters, activations, FLOPs,
receptive fields), computed from shapes alone.

    python scripts/summary.py vgg16 [--input-shape 224 224 3] [--num-classes 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fcnn  # noqa: E402
import models  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(models.INPUT_SHAPES))
    parser.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"),
                        help="per-example input (default: the model's own)")
    parser.add_argument("--num-classes", type=int, help="classes of the last layer")
    args = parser.parse_args(argv)
    build = getattr(models, args.model)
    layer = build() if args.num_classes is None else build(num_classes=args.num_classes)
    shape = tuple(args.input_shape or models.INPUT_SHAPES[args.model])
    s = fcnn.summary(layer, shape)
    print(f"{args.model} on {'x'.join(map(str, shape))}")
    print(s)
    return s


if __name__ == "__main__":
    main()
