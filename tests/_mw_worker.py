"""Subprocess helper of tests/test_distribute.py and tests/test_multiworker.py.

Runs the real training loop (``segbalance.train.train``) and records, through a callback,
what a test needs to see from outside:

* the loss returned by every train step (``on_train_batch_end``),
* what this worker's input pipeline reads (``Trainer.epoch_reads`` at ``on_epoch_begin``:
  epoch, plan positions and manifest rows),
* the final weights of the model (``on_train_end``), as an ``.npz`` and a digest.

Modes:
    compare --root DIR --out FILE.json
        1 device vs MirroredStrategy over 2 logical CPUs in one process, same seed/data.
    worker --manifest M --work-dir W --workers a,b --index I --out FILE.json [--resume]
        one MultiWorkerMirroredStrategy worker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np

TINY = {
    "data.image_size": 32,
    "model.name": "unet-small",
    "model.encoder_weights": "none",
    "model.decoder_filters": [32, 16, 8, 8, 8],
    "train.batch_size": 4,
    "train.precision": "float32",
    "train.seed": 3,
    "optimizer.warmup_epochs": 0.0,
    "augment.jit": False,  # XLA-compiling the augmentation costs more than it saves here
}


def latest_checkpoint(work: Path) -> int | None:
    """Number of the newest checkpoint a run's CheckpointManager recorded, if any."""
    index = work / "checkpoints" / "checkpoint"
    if not index.is_file():
        return None
    for line in index.read_text().splitlines():
        if line.startswith("model_checkpoint_path:"):
            return int(line.split("ckpt-")[-1].strip().strip('"'))
    return None


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (the OS picks them)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Recorder(keras.callbacks.Callback):
    """A training callback; every recorded value comes from the real computation.

    Args:
        reads_log: also append each shard read to this JSON-lines file as it is built.
    """

    def __init__(self, reads_log: Path | None = None) -> None:
        super().__init__()
        self.reads_log = reads_log  # one JSON line per shard, written at once (kill -9 safe)
        self.losses: list[float] = []
        self.reads: list[dict[str, Any]] = []
        self.weights: dict[str, np.ndarray] = {}

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        # What this worker's input pipeline reads: the trainer's own shard of the plan.
        trainer = self.params["trainer"]
        runtime = trainer.runtime
        positions, indices = trainer.epoch_reads(
            epoch, trainer.state.get("step"), runtime.num_workers, runtime.worker_index
        )
        entry = {
            "epoch": int(epoch),
            "indices": np.asarray(indices).tolist(),
            "positions": np.asarray(positions).tolist(),
        }
        self.reads.append(entry)
        if self.reads_log is not None:
            with self.reads_log.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.losses.append(float(logs["step_loss"]))

    def on_train_end(self, logs: Any = None) -> None:
        self.weights = {w.path: np.asarray(w.numpy()) for w in self.model.weights}

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.weights):
            h.update(np.ascontiguousarray(self.weights[name]).tobytes())
        return h.hexdigest()


def make_data(root: Path) -> Path:
    from segbalance.data.prepare import prepare_dataset
    from segbalance.data.synth import generate

    generate(root, scale=0.02, size=64, seed=0, progress=False, workers=1)
    return prepare_dataset(root, progress=False, workers=1).manifest_path


def bn_replicas_agree(strategy: Any, synchronize: bool) -> tuple[int, bool]:
    """Train a nested model with BN one step on 2 replicas: do BN statistics still agree?"""
    import keras
    import tensorflow as tf

    from segbalance.train.runtime import synchronize_batch_norm

    with strategy.scope():
        keras.utils.set_random_seed(0)
        inner_in = keras.Input((4,))
        inner = keras.Model(inner_in, keras.layers.BatchNormalization()(inner_in))
        x_in = keras.Input((4,))
        x = keras.layers.BatchNormalization()(keras.layers.Dense(8)(inner(x_in)))
        model = keras.Model(x_in, keras.layers.Dense(1)(x))
        opt = keras.optimizers.SGD(0.1)
        opt.build(model.trainable_variables)
    switched = synchronize_batch_norm(model) if synchronize else 0
    # Very different halves of the batch: per-replica statistics cannot agree by chance.
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    x *= np.arange(1, 9, dtype="float32")[:, None]
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(8)

    @tf.function
    def step(batch: Any) -> Any:
        def replica(xb: Any, yb: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
            return loss

        return strategy.run(replica, args=batch)

    for batch in strategy.experimental_distribute_dataset(data):
        step(batch)
    stats = [v.value for v in model.non_trainable_variables]
    agree = all(np.array_equal(s.values[0].numpy(), s.values[1].numpy()) for s in stats)
    return switched, agree


def compare(args: argparse.Namespace) -> None:
    from segbalance.config import DistributeConfig, load_config
    from segbalance.errors import UserError
    from segbalance.train import runtime, train

    # Split the CPU before anything initialises TensorFlow's devices.
    mirrored = runtime.make_strategy(DistributeConfig(devices="cpu:2"))
    manifest = make_data(args.root / "data")
    rec = Recorder()
    base = {**TINY, "data.manifest": str(manifest), "train.epochs": 1, "data.epoch_length": 16}
    out: dict[str, Any] = {"replicas": {}}
    weights = {}
    for name, devices in (("single", None), ("mirrored", "cpu:2")):
        cfg = load_config(None, {**base, "distribute.devices": devices})
        rec.losses = []
        result = train(cfg, args.root / name, callbacks=[rec])
        out[name] = rec.losses
        out["replicas"][name] = result.metrics["replicas"]
        weights[name] = rec.weights
    one, two = weights["single"], weights["mirrored"]
    assert sorted(one) == sorted(two)
    out["max_weight_diff"] = max(float(np.max(np.abs(one[k] - two[k]))) for k in one)
    try:
        bad = load_config(None, {**base, "distribute.devices": "cpu:2", "train.batch_size": 3})
        train(bad, args.root / "bad-batch", callbacks=[rec])
        out["bad_batch_error"] = None
    except UserError as err:
        out["bad_batch_error"] = str(err)
    out["bn_plain"] = bn_replicas_agree(mirrored, synchronize=False)
    out["bn_synchronized"] = bn_replicas_agree(mirrored, synchronize=True)
    args.out.write_text(json.dumps(out))


def worker(args: argparse.Namespace) -> None:
    from segbalance.config import load_config
    from segbalance.errors import UserError
    from segbalance.train import runtime, train

    rec = Recorder(args.out.with_suffix(".reads.jsonl"))
    overrides = {
        **TINY,
        "data.manifest": str(args.manifest),
        "train.epochs": args.epochs,
        "train.checkpoint_every_steps": args.every,
        "distribute.workers": args.workers.split(","),
        "distribute.worker_index": args.index,
        "distribute.connect_timeout_s": args.timeout,
    }
    base = args.work_dir / "config.yaml" if args.resume else None
    cfg = load_config(
        base, {k: v for k, v in overrides.items() if not args.resume or "distri" in k}
    )
    result = train(cfg, args.work_dir, resume=args.resume, callbacks=[rec])
    np.savez(args.out.with_suffix(".npz"), **rec.weights)
    # The strategy train() used (one per process): workers compare values collectively.
    strategy = runtime.make_strategy(cfg.distribute)
    runtime.check_same_on_all_workers(strategy, "epoch and step", [2, 0])
    try:
        runtime.check_same_on_all_workers(strategy, "epoch and step", [2, args.index])
        disagreement = None
    except UserError as err:
        disagreement = str(err)
    summary = {
        "index": args.index,
        "epochs_completed": result.epochs_completed,
        "already_complete": result.already_complete,
        "replicas": result.metrics.get("replicas"),
        "reads": rec.reads,
        "losses": rec.losses,
        "digest": rec.digest(),
        "disagreement": disagreement,
    }
    args.out.write_text(json.dumps(summary))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--root", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    w = sub.add_parser("worker")
    w.add_argument("--manifest", type=Path, required=True)
    w.add_argument("--work-dir", type=Path, required=True)
    w.add_argument("--workers", required=True)
    w.add_argument("--index", type=int, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--epochs", type=int, default=2)
    w.add_argument("--every", type=int, default=2)
    w.add_argument("--timeout", type=float, default=60.0)
    w.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    compare(args) if args.mode == "compare" else worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
