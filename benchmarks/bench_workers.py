"""Per-step time of the training step on 1 vs 2 local MultiWorkerMirroredStrategy workers.

Same model, same global batch, same compiled step as ``segbalance train``
(``segbalance.train.steps.make_train_step``), fed from in-memory tensors so the input
pipeline does not blur the comparison. Three set-ups, measured side by side in one run:

* ``default``: one process, the default strategy (what ``segbalance train`` uses alone);
* ``mwms x1``: one MWMS worker (gRPC server, collectives over 1 worker);
* ``mwms x2``: two MWMS worker processes on 127.0.0.1, each computing half the batch.

On one machine two workers share its cores, so ``mwms x2`` shows the cost of the
all-reduce and of splitting the batch, not a speed-up; across machines each worker brings
its own cores.

Usage:
    python benchmarks/bench_workers.py [--size 64] [--batch 8] [--steps 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def worker(args: argparse.Namespace) -> None:
    """One process: build the strategy, time ``args.steps`` steps, print JSON."""
    from segbalance.config import DistributeConfig, LossConfig, ModelConfig, OptimizerConfig
    from segbalance.train.runtime import make_runtime

    workers = args.workers.split(",") if args.workers else None
    dcfg = DistributeConfig(workers=workers, worker_index=args.index if workers else None)
    runtime = make_runtime(dcfg)
    strategy = runtime.strategy
    import keras
    import tensorflow as tf

    from segbalance.losses import get_loss
    from segbalance.models import build_model
    from segbalance.train import schedule, steps

    size, batch = (args.size, args.size), args.batch
    runtime.check_batch("--batch", batch)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model(ModelConfig(name="unet-small", encoder_weights="none"), size)
        optimizer = schedule.build_optimizer(OptimizerConfig(), 100, 1, "float32")
        optimizer.build(model.trainable_variables)
    steps.own_gradient_reduction(optimizer)
    step = steps.make_train_step(
        strategy, model, optimizer, get_loss(LossConfig()), batch, threshold=0.5
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, *size, 3)).astype("float32")
    masks = (rng.uniform(size=(batch, *size, 1)) > 0.7).astype("float32")

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        share = ctx.get_per_replica_batch_size(batch)
        lo = ctx.input_pipeline_id * share * (ctx.num_replicas_in_sync // ctx.num_input_pipelines)
        part = {"image": images[lo : lo + share], "mask": masks[lo : lo + share]}
        return tf.data.Dataset.from_tensors(part).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    times = []
    for i in range(args.warmup + args.steps):
        began = time.perf_counter()
        loss, _ = step(next(iterator))
        float(loss.numpy())  # wait for the step, collectives included
        if i >= args.warmup:
            times.append(time.perf_counter() - began)
    print("RESULT " + json.dumps({"times": times, "replicas": strategy.num_replicas_in_sync}))


def launch(args: argparse.Namespace, workers: list[str] | None) -> dict[str, Any]:
    """Run one set-up (1 process, or one process per worker) and collect its step times."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    base = [sys.executable, __file__, "--worker", "--size", str(args.size)]
    base += ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    count = len(workers) if workers else 1
    cmds = [
        base + (["--workers", ",".join(workers), "--index", str(i)] if workers else [])
        for i in range(count)
    ]
    procs = [
        subprocess.Popen(c, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in cmds
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=args.timeout)
            lines = [ln for ln in out.decode().splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"worker failed ({proc.returncode}):\n{err.decode()[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT ") :]))
    finally:
        for proc in procs:
            proc.kill()
    # A synchronous step ends when the slowest worker ends it.
    per_step = np.max([r["times"] for r in results], axis=0)
    return {"median_s": float(np.median(per_step)), "replicas": results[0]["replicas"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    rows = {
        "default": launch(args, None),
        "mwms x1": launch(args, [f"127.0.0.1:{p}" for p in free_ports(1)]),
        "mwms x2": launch(args, [f"127.0.0.1:{p}" for p in free_ports(2)]),
    }
    base = rows["default"]["median_s"]
    print(f"unet-small {args.size}px, global batch {args.batch}, {os.cpu_count()} CPU cores")
    print(f"{'set-up':<10} {'replicas':>8} {'s/step':>8} {'img/s':>7} {'vs default':>10}")
    for name, row in rows.items():
        t = row["median_s"]
        print(f"{name:<10} {row['replicas']:>8} {t:>8.3f} {args.batch / t:>7.1f} {t / base:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
