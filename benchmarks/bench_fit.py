"""One epoch of one U-Net three ways: segbalance train, fit on balanced_dataset, the tutorial.

The ways, on the same prepared synthetic data (default: the tutorial's 1105 images at 256
px, 20% held out for validation), the same model (``unet-small``, no pretrained weights),
loss (``dice+focal``), optimiser (AdamW + cosine schedule + clipnorm), batch and precision:

* ``train``: ``segbalance train`` (its own loop; per-group validation, checkpoints, logs).
* ``fit``: plain ``keras.Model.fit`` on ``segbalance.balanced_dataset`` (uniform balance,
  default augmentation), ``validation_data`` the valid rows.
* ``tutorial``: ``model.fit`` on the tutorial's recipe (one pipeline per group, albumentations
  in ``tf.numpy_function``, ``sample_from_datasets``; see tutorial_recipe.py), same
  ``validation_data``.

Each way runs in its own process (no shared graph caches or thread pools) and reports the
wall time of every epoch (validation included, the first with tracing and compiling) and
train images per second. An epoch is ``steps_per_epoch`` batches of the train split.

Usage:
    python benchmarks/bench_fit.py                           # tutorial size: 1105 images, 256 px
    python benchmarks/bench_fit.py --scale 0.02 --size 64    # a quick check that it runs
    python benchmarks/bench_fit.py --epochs 2 --ways fit,tutorial

Needs albumentations for ``tutorial`` (``pip install 'segbalance[albumentations]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WAYS = ("train", "fit", "tutorial")
HERE = Path(__file__).resolve().parent


def make_data(root: Path, scale: float, size: int) -> Path:
    """Synthetic data in ``root`` (generated and prepared once), its manifest path."""
    from segbalance.data.prepare import prepare_dataset
    from segbalance.data.synth import generate

    manifest = root / "segbalance" / "manifest.csv"
    if not manifest.is_file():
        generate(root, scale=scale, size=size, seed=0, progress=False, workers=1)
        manifest = prepare_dataset(root, progress=False, workers=1).manifest_path
    return manifest


def epoch_timer() -> Any:
    """A Keras callback that records the wall time of every epoch in ``.seconds``."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._began = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._began = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self._began)

    return EpochTimer()


def run_train(args: argparse.Namespace, manifest: Path, timer: Any) -> None:
    """``segbalance train`` for ``args.epochs`` epochs in a fresh work dir."""
    from segbalance.config import load_config
    from segbalance.train.run import train

    cfg = load_config(
        None,
        {
            "data.manifest": str(manifest),
            "data.image_size": args.size,
            "model.name": args.model,
            "model.encoder_weights": "none",
            "train.batch_size": args.batch,
            "train.epochs": args.epochs,
            "train.precision": args.precision,
        },
    )
    work = Path(tempfile.mkdtemp(prefix="bench-fit-")) / "run"
    train(cfg, work, callbacks=[timer])


def compiled_model(args: argparse.Namespace, steps: int) -> Any:
    """The model, loss and optimiser of ``segbalance train``, compiled for ``model.fit``."""
    from segbalance.config import LossConfig, ModelConfig, OptimizerConfig
    from segbalance.losses import get_loss
    from segbalance.models import build_model
    from segbalance.train import precision, schedule

    policy = precision.resolve_precision(args.precision)
    precision.apply_precision(policy)
    model = build_model(ModelConfig(name=args.model, encoder_weights="none"), (args.size,) * 2)
    optimizer = schedule.build_optimizer(OptimizerConfig(), steps, args.epochs, policy)
    model.compile(optimizer=optimizer, loss=get_loss(LossConfig()))
    return model


def valid_data(args: argparse.Namespace, manifest: Path) -> Any:
    """The valid rows as ``(image, mask)`` batches, for ``validation_data``."""
    from segbalance.data.manifest import read_manifest
    from segbalance.pipeline import build_eval_dataset

    valid = read_manifest(str(manifest)).select(split="valid")
    ds = build_eval_dataset(valid, image_size=(args.size,) * 2, batch_size=args.batch)
    return ds.map(lambda b: (b["image"], b["mask"]))


def run_fit(args: argparse.Namespace, manifest: Path, timer: Any, tutorial: bool) -> None:
    """``model.fit`` on ``balanced_dataset`` or (``tutorial``) on the tutorial's recipe."""
    import segbalance
    from segbalance.data.manifest import read_manifest

    steps = segbalance.steps_per_epoch(manifest, args.batch)
    if tutorial:
        from tutorial_recipe import tutorial_dataset

        rows = read_manifest(str(manifest)).select(split="train")
        # One repeat more than fit needs: epochs of whole batches take up to B-1 samples
        # more than the rows, so repeat(epochs) alone runs out in the last epoch.
        train = tutorial_dataset(
            rows, image_size=args.size, batch_size=args.batch, epochs=args.epochs + 1
        )
    else:
        train = segbalance.balanced_dataset(
            manifest, image_size=args.size, batch_size=args.batch, seed=0
        )
    model = compiled_model(args, steps)
    model.fit(
        train,
        epochs=args.epochs,
        steps_per_epoch=steps,
        validation_data=valid_data(args, manifest),
        callbacks=[timer],
        shuffle=False,
        verbose=0,
    )


def one_way(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``args.way`` in this process; its epoch times and throughput."""
    import keras

    import segbalance

    manifest = Path(args.manifest)
    keras.utils.set_random_seed(0)
    timer = epoch_timer()
    began = time.perf_counter()
    if args.way == "train":
        run_train(args, manifest, timer)
    else:
        run_fit(args, manifest, timer, tutorial=args.way == "tutorial")
    images = segbalance.steps_per_epoch(manifest, args.batch) * args.batch
    return {
        "way": args.way,
        "images_per_epoch": images,
        "epoch_s": timer.seconds,
        "img_s": [images / s for s in timer.seconds],
        "wall_s": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0: the tutorial's 1105 images")
    parser.add_argument("--size", type=int, default=256, help="image side, data and model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="unet-small")
    parser.add_argument("--precision", default="float32", help="float32 | auto | mixed_*")
    parser.add_argument("--ways", default=",".join(WAYS), help="comma list of " + ", ".join(WAYS))
    parser.add_argument("--data", default=None, help="data folder (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--way", help=argparse.SUPPRESS)  # internal: one way, this process
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        print(json.dumps(one_way(args)), flush=True)
        return

    root = Path(args.data or tempfile.mkdtemp(prefix="segbalance-bench-fit-"))
    manifest = make_data(root, args.scale, args.size)
    print(
        f"data: {root} (scale {args.scale}, {args.size} px); batch {args.batch}, "
        f"{args.epochs} epoch(s), {args.model}, {args.precision}",
        flush=True,
    )
    results = []
    for way in [w for w in args.ways.split(",") if w]:
        if way not in WAYS:
            parser.error(f"unknown way '{way}'; choose from {', '.join(WAYS)}")
        passed = [f"--{k}={getattr(args, k)}" for k in ("size", "batch", "epochs", "model")]
        command = [sys.executable, __file__, f"--way={way}", f"--manifest={manifest}", *passed]
        command.append(f"--precision={args.precision}")
        proc = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
        if proc.returncode:
            print(f"{way:9s} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        base = results[0]["img_s"][-1]
        epochs = ", ".join(f"{s:.1f}" for s in result["epoch_s"])
        print(
            f"{way:9s} {result['images_per_epoch']} img/epoch  epoch wall s: {epochs}  "
            f"last epoch {result['img_s'][-1]:7.1f} img/s  x{result['img_s'][-1] / base:.2f}  "
            f"(process total {result['wall_s']:.1f} s)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
