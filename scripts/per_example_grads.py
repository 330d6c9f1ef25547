"""Per-example gradients through the hand-written rules, and DP-SGD on the embedded MNIST.

Computes each example's gradient with `jax.vmap(jax.grad(...))`, reports their norms and the
throughput, then trains LeNet-5 with DP-SGD (clip each example's gradient to --clip, add
Gaussian noise of std --noise * clip, average) and reports test accuracy.

    python scripts/per_example_grads.py [--epochs 5] [--clip 1.0] [--noise 1.0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import data, privacy, train  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--clip", type=float, default=1.0, help="per-example gradient norm bound C")
    p.add_argument("--noise", type=float, default=1.0, help="noise multiplier sigma")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    ds = data.load()
    model = models.lenet5()
    key = jax.random.key(args.seed)
    params, _ = model.init(key, (28, 28, 1))
    opt = optax.sgd(args.lr, momentum=0.9)
    opt_state = opt.init(params)

    grads_fn = jax.jit(lambda p, x, y: privacy.per_example_grads(model, p, x, y))

    @jax.jit
    def dp_step(params, opt_state, x, y, k):
        grads = privacy.per_example_grads(model, params, x, y)
        norms = privacy.global_norms(grads)
        g = privacy.dp_sgd_gradient(grads, k, args.clip, args.noise)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, norms

    x, y = next(data.batches(ds.train_images, ds.train_labels, args.batch_size, seed=args.seed))
    jax.block_until_ready(grads_fn(params, x, y))
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        out = grads_fn(params, x, y)
    jax.block_until_ready(out)
    rate = reps * len(y) / (time.perf_counter() - t)
    norms = np.asarray(privacy.global_norms(out))
    print(f"per-example gradients: {rate:,.0f} examples/s (batch {len(y)}, LeNet-5, "
          f"{sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)):,} params each)")
    print(f"  gradient norms at init: min {norms.min():.3f}  median {np.median(norms):.3f}  "
          f"max {norms.max():.3f}")

    evaluate = train.make_evaluate(model)
    step = 0
    for epoch in range(args.epochs):
        clipped = []
        for x, y in data.batches(ds.train_images, ds.train_labels, args.batch_size,
                                 seed=args.seed, epoch=epoch, drop_last=True):
            params, opt_state, norms = dp_step(params, opt_state, x, y,
                                               jax.random.fold_in(key, step))
            clipped.append(float(np.mean(np.asarray(norms) > args.clip)))
            step += 1
        loss, acc = evaluate(params, ds.test_images, ds.test_labels)
        print(f"DP-SGD epoch {epoch + 1}: test accuracy {100 * acc:.2f}%  test loss {loss:.3f}  "
              f"({100 * np.mean(clipped):.0f}% of examples clipped at C={args.clip}, "
              f"noise sigma={args.noise})")
    return acc


if __name__ == "__main__":
    main()
