"""Training throughput of the loop's compiled step: images/s per model and precision.

Measures, side by side in one run, the train step of ``segbalance.train.steps`` (forward,
loss, gradient, AdamW update with clipnorm) on in-memory batches, so the numbers are the
model's cost and not the input pipeline's. Each (model, precision) pair builds a fresh
model under its policy, runs warm-up steps (tracing) and then times ``--steps`` steps.

``auto`` resolves as in training (GPU: mixed_float16; CPU with bf16 instructions:
mixed_bfloat16; else float32); the resolved policy is printed next to it.

Usage:
    python benchmarks/bench_train.py                       # unet-small + efficientnetb4
    python benchmarks/bench_train.py --models unet-small --precisions float32 mixed_bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def bench_one(
    model_name: str, policy: str, size: int, batch: int, warmup: int, steps_: int
) -> float:
    """Images per second of the train step for one model and dtype policy."""
    import keras
    import numpy as np
    import tensorflow as tf

    from segbalance.config import LossConfig, ModelConfig, OptimizerConfig
    from segbalance.losses import get_loss
    from segbalance.models import build_model
    from segbalance.train import precision, schedule, steps

    precision.apply_precision(policy)
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name=model_name, encoder_weights="none"), (size, size))
    opt = schedule.build_optimizer(OptimizerConfig(), 100, 1, policy)
    opt.build(model.trainable_variables)
    steps.own_gradient_reduction(opt)
    loss_fn = get_loss(LossConfig())
    step = steps.make_train_step(tf.distribute.get_strategy(), model, opt, loss_fn, batch, 0.5)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32)
    data = {"image": image, "mask": tf.cast(image[..., :1] > 127, tf.float32)}
    for _ in range(warmup):
        float(step(data)[0])
    began = time.perf_counter()
    for _ in range(steps_):
        loss = step(data)[0]
    float(loss)  # wait for the last step
    return batch * steps_ / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet-small", "efficientnetb4"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "auto"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import tensorflow as tf

    from segbalance.train import precision

    print(
        f"devices: {[d.name for d in tf.config.list_physical_devices()]}; "
        f"CPU bf16 instructions: {precision.cpu_supports_bf16()}; "
        f"{args.size}px, batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up"
    )
    results = []
    for model_name in args.models:
        base = None
        for requested in args.precisions:
            policy = precision.resolve_precision(requested)
            speed = bench_one(model_name, policy, args.size, args.batch, args.warmup, args.steps)
            base = base or speed
            label = f"{requested} ({policy})" if requested == "auto" else policy
            print(f"{model_name:16s} {label:28s} {speed:8.2f} img/s  x{speed / base:.2f}")
            results.append(
                {"model": model_name, "precision": requested, "policy": policy, "img_s": speed}
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
