"""The parts of benchmarks/gpu_check.sh that are not a benchmark script of their own.

``demo``: the demo's uniform run (its settings, 64 px) at ``mixed_float16`` (loss scaling)
with XLA on; passes when every epoch's loss is finite and the last is below the first.
``mirrored``: the train step of ``segbalance.train.steps`` under a ``MirroredStrategy`` on
every visible GPU (``--cpu-smoke``: two logical CPUs), XLA off and on, synchronized batch
norm; images/s and whether both settings give the same losses.

Run:  python benchmarks/gpu_check.py demo|mirrored [--cpu-smoke] [--work DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def check_demo(work: Path, smoke: bool) -> bool:
    """Train the demo's uniform run at mixed_float16 + XLA; True when the loss falls."""
    from segbalance.config import load_config
    from segbalance.data.prepare import prepare_dataset
    from segbalance.data.synth import generate
    from segbalance.demo import QUICK
    from segbalance.train import train

    s = QUICK if not smoke else replace(QUICK, scale=0.03, image_size=32, epoch_length=32)
    s = replace(s, epochs=3, batch_size=16 if not smoke else 4)
    data = work / "demo-data"
    generate(data, scale=s.scale, size=s.image_size, seed=s.seed, progress=False)
    manifest = prepare_dataset(data, progress=False).manifest_path
    keys = {**s.overrides(manifest, "uniform"), "train.precision": "mixed_float16"}
    cfg = load_config(None, {**keys, "train.jit_compile": True})
    began = time.perf_counter()
    result = train(cfg, work / "demo-run", overwrite=True)
    losses = [float(row["loss"]) for row in result.history]
    finite = all(math.isfinite(v) for v in losses)
    falls = finite and len(losses) > 1 and losses[-1] < losses[0]
    print(
        f"demo (mixed_float16, loss scaling, jit_compile on): {s.epochs} epochs in "
        f"{time.perf_counter() - began:.0f} s; loss per epoch "
        f"{', '.join(f'{v:.4f}' for v in losses)}; finite: {finite}; falls: {falls} "
        f"-> {'PASS' if falls else 'FAIL'}"
    )
    return falls


def check_mirrored(smoke: bool) -> bool:
    """The train step under MirroredStrategy, XLA off and on; True when both agree."""
    import tensorflow as tf

    from segbalance.config import DistributeConfig
    from segbalance.train import precision, runtime

    gpus = tf.config.list_physical_devices("GPU")
    if smoke or not gpus:
        if not smoke:
            print("mirrored: no GPU visible -> FAIL")
            return False
        strategy = runtime.make_strategy(DistributeConfig(devices="cpu:2"))
    else:
        strategy = tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(len(gpus))])
    size, batch = (64, 4) if smoke else (384, 16 * strategy.num_replicas_in_sync)
    where = ", ".join(strategy.extended.worker_devices)
    print(f"mirrored: {strategy.num_replicas_in_sync} replica(s) on {where}")
    losses = {}
    replicas = strategy.num_replicas_in_sync
    for jit in (False, True):
        if jit and not precision.resolve_jit(True, replicas=replicas):
            print(f"  jit_compile on: not used with {replicas} replicas (synchronized batch norm)")
            losses[jit] = losses[False]
            continue
        losses[jit], speed = _mirrored_steps(strategy, size, batch, jit, steps=3 if smoke else 10)
        print(
            f"  unet-small {size} px, global batch {batch}, jit_compile {'on' if jit else 'off'}: "
            f"{speed:.1f} img/s; losses {', '.join(f'{v:.4f}' for v in losses[jit])}"
        )
    finite = all(math.isfinite(v) for v in losses[False] + losses[True])
    same = finite and all(
        math.isclose(a, b, rel_tol=1e-2, abs_tol=1e-3)
        for a, b in zip(losses[False], losses[True], strict=True)
    )
    print(f"  finite: {finite}; XLA on == off (1%): {same} -> {'PASS' if same else 'FAIL'}")
    return same


def _mirrored_steps(
    strategy: Any, size: int, batch: int, jit: bool, steps: int
) -> tuple[list[float], float]:
    """(the first steps' losses from one seed, images/s) of unet-small under ``strategy``."""
    import keras
    import numpy as np
    import tensorflow as tf

    from segbalance.config import load_config
    from segbalance.losses import get_loss
    from segbalance.models import build_model
    from segbalance.train import schedule
    from segbalance.train import steps as tsteps
    from segbalance.train.runtime import synchronize_batch_norm

    cfg = load_config(None, {"data.image_size": size, "train.batch_size": batch})
    keras.mixed_precision.set_global_policy("float32")  # the same numbers both ways
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model(cfg.model, cfg.data.image_size)
        opt = schedule.build_optimizer(cfg.optimizer, 100, 1, "float32")
        opt.build(model.trainable_variables)
    if strategy.num_replicas_in_sync > 1:  # as the trainer does
        synchronize_batch_norm(model)
    tsteps.own_gradient_reduction(opt)
    step = tsteps.make_train_step(
        strategy, model, opt, get_loss(cfg.loss), batch, 0.5, jit_compile=jit
    )
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    rows = {"image": image, "mask": (image[..., :1] > 127).astype(np.float32)}
    data = tf.data.Dataset.from_tensors(rows).repeat()
    it = iter(strategy.experimental_distribute_dataset(data))
    losses = [float(step(next(it))[0]) for _ in range(3)]  # the first traces and compiles
    began = time.perf_counter()
    for _ in range(steps):
        loss = step(next(it))[0]
    float(loss)
    return losses, batch * steps / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["demo", "mirrored"])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, CPU devices")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()
    if args.part == "mirrored":
        return 0 if check_mirrored(args.cpu_smoke) else 1
    work = args.work or Path(tempfile.mkdtemp(prefix="segbalance-gpu-check-"))
    return 0 if check_demo(work, args.cpu_smoke) else 1


if __name__ == "__main__":
    sys.exit(main())
