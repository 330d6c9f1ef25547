"""Train a model from models/ on MNIST-like data or CIFAR-10: the main job.

Defaults train LeNet-5 on the embedded MNIST subset (5,000 training digits) and test on the
official 10,000 MNIST test images, offline, in well under a minute on 2 CPU cores.

    python scripts/train.py [--model lenet5] [--dataset mnist_embedded] [--epochs 30]
        [--checkpoint-dir ckpt [--resume]] [--metrics metrics.json] [--plot curves.png]
        [--devices N]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import checkpoint, data, parallel, train  # noqa: E402

OPTIMIZERS = ("sgd", "adam", "adamw")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5", choices=sorted(models.INPUT_SHAPES))
    p.add_argument("--dataset", default="mnist_embedded",
                   choices=["mnist_embedded", "mnist", "fashion_mnist", "cifar10"])
    p.add_argument("--data-dir", type=Path, help="default: $FCNN_DATA or ~/.cache/fcnn")
    p.add_argument("--download", action="store_true", help="fetch missing dataset files")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (cosine decay)")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS,
                   help="sgd = Nesterov momentum 0.9")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 on weights")
    p.add_argument("--max-shift", type=int, default=2, help="random translation (pixels)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype; bfloat16 keeps float32 master parameters")
    p.add_argument("--devices", type=int,
                   help="data-parallel over the first N of jax.devices(), the batch split N "
                        "ways (default: 1; with --distributed: every device of every process)")
    p.add_argument("--distributed", action="store_true",
                   help="multi-process: jax.distributed.initialize() first (auto-detected on "
                        "SLURM, MPI and TPU pods; else give the three flags below)")
    p.add_argument("--coordinator", help="host:port of process 0 (with --distributed)")
    p.add_argument("--num-processes", type=int, help="(with --distributed)")
    p.add_argument("--process-id", type=int, help="(with --distributed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", type=Path, help="save a checkpoint after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--metrics", type=Path, help="write the run's metrics as JSON here")
    p.add_argument("--plot", type=Path, help="write loss/accuracy curves (PNG) here")
    args = p.parse_args(argv)
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    for name in ("epochs", "batch_size", "devices"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    given = [f for f in ("coordinator", "num_processes", "process_id") if getattr(args, f)
             is not None]
    if given and not args.distributed:
        p.error(f"--{given[0].replace('_', '-')} needs --distributed")
    return args


def optimizer(args, steps):
    schedule = optax.cosine_decay_schedule(args.lr, max(steps, 1))
    if args.optimizer == "sgd":
        return optax.sgd(schedule, momentum=0.9, nesterov=True)
    return getattr(optax, args.optimizer)(schedule)


def progress(total, desc):
    """A tqdm bar on a terminal; None (plain lines) otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def main(argv=None):
    args = parse(argv)
    start = time.perf_counter()
    if args.distributed:
        # CPU processes exchange gradients through gloo; GPUs and TPUs use their own fabric.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    n_devices = args.devices or (jax.device_count() if args.distributed else 1)
    if args.distributed and n_devices != jax.device_count():
        print(f"train.py: --distributed trains on all {jax.device_count()} devices of the "
              f"{jax.process_count()} processes; got --devices {n_devices}", file=sys.stderr)
        return 2
    if args.batch_size % n_devices:
        print(f"train.py: --batch-size {args.batch_size} does not split evenly over "
              f"{n_devices} devices", file=sys.stderr)
        return 2
    ds = data.load(args.dataset, args.data_dir, args.download)
    shape = ds.train_images.shape[1:]
    model = getattr(models, args.model)(num_classes=10)
    key = jax.random.key(args.seed)
    init_key, run_key = jax.random.split(key)
    params, _ = model.init(init_key, shape)
    steps_per_epoch = math.ceil(len(ds.train_labels) / args.batch_size)
    opt = optimizer(args, args.epochs * steps_per_epoch)
    opt_state = opt.init(params)
    compute = None if args.dtype == "float32" else jax.numpy.dtype(args.dtype)
    try:
        mesh = parallel.batch_mesh(n_devices) if n_devices > 1 else None
    except ValueError as e:
        print(f"train.py: --devices {n_devices}: {e}", file=sys.stderr)
        return 2
    step_fn = train.make_step(model, opt, weight_decay=args.weight_decay,
                              max_shift=args.max_shift, compute_dtype=compute, mesh=mesh)
    evaluate = train.make_evaluate(model, compute_dtype=compute, mesh=mesh)
    epoch, step, history = 0, 0, []
    ckpt = args.checkpoint_dir / "checkpoint.npz" if args.checkpoint_dir else None
    if args.resume and ckpt.exists():
        state, info = checkpoint.restore(
            ckpt, dict(params=params, opt_state=opt_state, key=run_key))
        params, opt_state, run_key = state["params"], state["opt_state"], state["key"]
        epoch, step, history = info["epoch"], info["step"], info["metadata"]["history"]
        say(f"resumed from {ckpt} at epoch {epoch}, step {step}")
    if mesh is not None:
        params, opt_state = parallel.replicate(mesh, (params, opt_state))
        say(f"data-parallel over {n_devices} devices in {jax.process_count()} process(es): "
            f"{args.batch_size // n_devices} images per device per step")
    say(f"{args.model} on {args.dataset}: {len(ds.train_labels):,} train / "
          f"{len(ds.test_labels):,} test images, {args.epochs} epochs of {steps_per_epoch} steps")
    train_seconds, seen = 0.0, 0
    while epoch < args.epochs:
        bar = lead and progress(len(ds.train_labels), f"epoch {epoch + 1}/{args.epochs}")
        t0, losses = time.perf_counter(), []
        for x, y in data.batches(ds.train_images, ds.train_labels, args.batch_size,
                                 seed=args.seed, epoch=epoch):
            if mesh is not None:
                x, y = parallel.shard_batch(mesh, x, y)
            params_next, opt_state_next, m = step_fn(params, opt_state, x, y,
                                                     jax.random.fold_in(run_key, step))
            loss = float(m["loss"])
            if not math.isfinite(loss):
                where = f"; the last good checkpoint is {ckpt}" if ckpt else ""
                print(f"diverged: loss is {loss} at step {step} (epoch {epoch + 1}); stopping "
                      f"with the parameters from before this step{where}. Try a lower --lr.",
                      file=sys.stderr)
                return 3
            params, opt_state, step = params_next, opt_state_next, step + 1
            losses.append(loss)
            if bar:
                bar.update(len(y))
                bar.set_postfix(loss=f"{loss:.4f}",
                                img_s=f"{bar.n / (time.perf_counter() - t0):,.0f}")
        if bar:
            bar.close()
        elapsed = time.perf_counter() - t0
        train_seconds += elapsed
        seen += len(ds.train_labels)
        test_loss, test_acc = evaluate(params, ds.test_images, ds.test_labels)
        epoch += 1
        history.append(dict(epoch=epoch, train_loss=float(np.mean(losses)), test_loss=test_loss,
                            test_accuracy=test_acc))
        say(f"epoch {epoch:3d}  train loss {history[-1]['train_loss']:.4f}  test loss "
              f"{test_loss:.4f}  test accuracy {100 * test_acc:.2f}%  "
              f"{len(ds.train_labels) / elapsed:,.0f} img/s", flush=True)
        if ckpt and lead:
            checkpoint.save(ckpt, dict(params=params, opt_state=opt_state, key=run_key),
                            step=step, epoch=epoch, metadata=dict(history=history))
    wall = time.perf_counter() - start
    result = dict(
        model=args.model, dataset=args.dataset, epochs=history,
        test_accuracy=history[-1]["test_accuracy"] if history else None,
        images_per_second=seen / train_seconds if train_seconds else None,
        wall_seconds=wall, params_sha256=train.params_sha256(params),
    )
    say(f"test accuracy {100 * result['test_accuracy']:.2f}% in {wall:.1f} s "
          f"(params sha256 {result['params_sha256'][:16]})")
    if args.metrics and lead:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(result, indent=1))
    if args.plot and lead:
        plot(history, args.plot, f"{args.model} on {args.dataset}")
    return 0


def plot(history, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], color="C2")
    ax_acc.set(xlabel="epoch", ylabel="%", title="test accuracy")
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
