"""Train a model from models/ on MNIST-like data or CIFAR-10: the main job.

Defaults train LeNet-5 on the embedded MNIST subset (5,000 training digits) and test on the
official 10,000 MNIST test images, offline, in well under a minute on 2 CPU cores, with
`fcnn.train.Recipe()`'s recipe. The loop is `fcnn.train.fit`; this script is flags and printing.

    python scripts/train.py [--model lenet5] [--dataset mnist_embedded] [--epochs 30]
        [--checkpoint-dir ckpt [--resume]] [--init-from ckpt/checkpoint.npz]
        [--metrics metrics.json] [--plot curves.png] [--devices N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from fcnn import checkpoint, data, info, layers, parallel, train  # noqa: E402

DEFAULT = train.Recipe()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5", choices=sorted(models.CLASSIFIERS))
    p.add_argument("--dataset", default="mnist_embedded",
                   choices=["mnist_embedded", "mnist", "fashion_mnist", "cifar10"])
    p.add_argument("--data-dir", type=Path, help="default: $FCNN_DATA or ~/.cache/fcnn")
    p.add_argument("--download", action="store_true", help="fetch missing dataset files")
    p.add_argument("--epochs", type=int, default=DEFAULT.epochs)
    p.add_argument("--batch-size", type=int, default=DEFAULT.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULT.lr, help="peak learning rate (cosine decay)")
    p.add_argument("--optimizer", default=DEFAULT.optimizer, choices=train.OPTIMIZERS,
                   help="sgd = Nesterov momentum 0.9")
    p.add_argument("--weight-decay", type=float, default=DEFAULT.weight_decay,
                   help="L2 on weights")
    p.add_argument("--max-shift", type=int, default=DEFAULT.max_shift,
                   help="random translation (pixels)")
    p.add_argument("--dtype", default=DEFAULT.dtype, choices=train.DTYPES,
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
    p.add_argument("--seed", type=int, default=DEFAULT.seed)
    p.add_argument("--checkpoint-dir", type=Path, help="save a checkpoint after every epoch")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint-dir (refused if any flag that shapes the "
                        "result differs from the checkpoint's)")
    p.add_argument("--init-from", type=Path,
                   help="start a new run from this checkpoint's parameters (fresh optimizer "
                        "and schedule): how to train a finished run further")
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
    try:  # every Recipe field is a flag of the same name
        args.recipe = train.Recipe(**{f.name: getattr(args, f.name)
                                      for f in dataclasses.fields(train.Recipe)})
    except ValueError as e:
        p.error(str(e))
    return args


# recorded entries that follow from a flag: said only when the flag itself did not change
DERIVED = {"architecture": ("model", "--model (its layers)"),
           "train_images": ("dataset", "--dataset (its size)"),
           "test_images": ("dataset", "--dataset (its size)"),
           "dataset_sha256": ("dataset", "--dataset (its contents)"),
           "init": (None, "--init-from")}


def mismatch_lines(differences) -> list[str]:
    """`--flag: checkpoint A, now B` for each difference a checkpoint reported."""
    changed = {k for k, _, _ in differences}
    lines = []
    for key, saved, now in differences:
        source, name = DERIVED.get(key, (None, "--" + key.replace("_", "-")))
        if source in changed:
            continue
        short = [repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..." for v in (saved, now)]
        lines.append(f"{name}: checkpoint {short[0]}, now {short[1]}")
    return lines


class Bar:
    """A tqdm bar per epoch on a terminal (an `on_step` consumer); nothing otherwise."""

    def __init__(self, epochs: int, enabled: bool):
        self.epochs, self.enabled, self.bar, self.epoch = epochs, enabled, None, None

    def __call__(self, p: train.Progress):
        if not self.enabled:
            return
        if p.epoch != self.epoch:
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=p.total, desc=f"epoch {p.epoch}/{self.epochs}", unit="img",
                            leave=False, dynamic_ncols=True)
            self.epoch = p.epoch
        self.bar.update(p.seen - self.bar.n)
        self.bar.set_postfix(loss=f"{p.loss:.4f}", grad=f"{p.grad_norm:.3g}",
                             img_s=f"{p.seen / p.seconds:,.0f}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main(argv=None):
    args = parse(argv)
    start = time.perf_counter()
    if args.distributed:
        # CPU processes exchange gradients through gloo; GPUs and TPUs use their own fabric.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)

    def fail(message, code=2):
        print(f"train.py: {message}", file=sys.stderr)
        return code

    n_devices = args.devices or (jax.device_count() if args.distributed else 1)
    if args.distributed and n_devices != jax.device_count():
        return fail(f"--distributed trains on all {jax.device_count()} devices of the "
                    f"{jax.process_count()} processes; got --devices {n_devices}")
    if args.batch_size % n_devices:
        return fail(f"--batch-size {args.batch_size} does not split evenly over {n_devices} "
                    "devices")
    try:
        mesh = parallel.batch_mesh(n_devices) if n_devices > 1 else None
    except ValueError as e:
        return fail(f"--devices {n_devices}: {e}")
    ds = data.load(args.dataset, args.data_dir, args.download)
    model = getattr(models, args.model)(num_classes=10)
    image_shape = ds.train_images.shape[1:]
    try:
        model.info.shape(image_shape)
    except layers.LayerError as e:
        own = "x".join(map(str, models.INPUT_SHAPES[args.model]))
        return fail(f"--model {args.model} (made for {own} inputs) does not fit "
                    f"{args.dataset}'s {'x'.join(map(str, image_shape))} images: {e}")
    recipe = args.recipe
    ckpt = args.checkpoint_dir / "checkpoint.npz" if args.checkpoint_dir else None
    params = state = None
    if args.init_from:
        try:
            params, state = train.load_params(args.init_from, model, with_state=True)
        except checkpoint.CheckpointError as e:
            return fail(f"--init-from: {e}")
        say(f"starting from the parameters of {args.init_from}")
    if mesh is not None:
        say(f"data-parallel over {n_devices} devices in {jax.process_count()} process(es): "
            f"{args.batch_size // n_devices} images per device per step")
    say(info().line())
    say(f"{args.model} on {args.dataset}: {len(ds.train_labels):,} train / "
        f"{len(ds.test_labels):,} test images, {recipe.epochs} epochs of "
        f"{recipe.steps_per_epoch(len(ds.train_labels))} steps")
    bar = Bar(recipe.epochs, lead and sys.stderr.isatty())

    def on_epoch(r):
        bar.close()
        say(f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f}  test loss "
            f"{r['test_loss']:.4f}  test accuracy {100 * r['test_accuracy']:.2f}%  "
            f"{r['images_per_second']:,.0f} img/s", flush=True)

    try:
        result = train.fit(model, ds, recipe, params=params, state=state,
                           checkpoint_dir=args.checkpoint_dir,
                           resume=args.resume, mesh=mesh, on_step=bar, on_epoch=on_epoch,
                           on_resume=lambda info: say(f"resuming from {ckpt} at epoch "
                                                      f"{info['epoch']}, step {info['step']}"),
                           describe=dict(model=args.model, dataset=args.dataset))
    except train.CheckpointExists as e:
        return fail(f"{e.path} already holds a checkpoint: add --resume to continue that run, "
                    "or give another --checkpoint-dir")
    except checkpoint.ConfigMismatch as e:
        lines = "".join(f"\n  {line}" for line in mismatch_lines(e.differences))
        return fail(f"--resume: {e.path} was made under another configuration:{lines}\n"
                    "Resume with the checkpoint's flags; to train a finished run further, "
                    "start a new run from its parameters with --init-from.")
    except checkpoint.CheckpointError as e:
        return fail(f"--resume: {e}")
    except train.Diverged as e:
        bar.close()
        return fail(f"{e}" + (" (--lr)" if e.suggests_lower_lr else ""), code=3)
    wall = time.perf_counter() - start
    history = result.history
    metrics = dict(
        model=args.model, dataset=args.dataset, epochs=history,
        test_accuracy=history[-1]["test_accuracy"] if history else None,
        images_per_second=result.images_per_second, wall_seconds=wall,
        params_sha256=result.params_sha256,
    )
    say(f"test accuracy {100 * metrics['test_accuracy']:.2f}% in {wall:.1f} s "
        f"(params sha256 {result.params_sha256[:16]})")
    if args.metrics and lead:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(metrics, indent=1))
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
