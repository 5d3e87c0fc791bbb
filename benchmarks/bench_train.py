"""Training throughput of the loop's compiled step: images/s per model, precision and XLA.

Measures, side by side in one run, the train step of ``segbalance.train.steps`` (forward,
loss, gradient, AdamW update with clipnorm) on in-memory batches, so the numbers are the
model's cost and not the input pipeline's: :func:`segbalance.train.steps.time_train_steps`,
the same function the ``auto`` precision probe uses. Each (model, precision, jit) builds a
fresh model under its policy, runs warm-up steps (tracing, compiling) and then times
``--steps`` single steps; the fastest counts (a shared machine's bursts slow some steps).

``auto`` precision resolves by the hardware rule (GPU: mixed_float16; CPU with bf16
instructions: mixed_bfloat16, which training then confirms with its probe; else float32).

Usage:
    python benchmarks/bench_train.py                       # unet-small + efficientnetb4
    python benchmarks/bench_train.py --models unet-small --precisions float32 mixed_bfloat16
    python benchmarks/bench_train.py --size 384 --batch 16 --jit off on   # on a GPU
    python benchmarks/bench_train.py --precision-probe --size 96 --batch 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def bench_one(
    model_name: str,
    policy: str,
    size: int,
    batch: int,
    warmup: int,
    steps_: int,
    jit: bool = False,
) -> float:
    """Images per second of the train step for one model, dtype policy and XLA setting."""
    from segbalance.config import load_config
    from segbalance.train import steps

    cfg = load_config(None, {"model.name": model_name, "data.image_size": size})
    seconds = steps.time_train_steps(
        cfg, [policy], batch, steps=steps_, warmup=warmup, jit_compile=jit
    )
    return batch / seconds[policy]


def probe(models: list[str], size: int, batch: int, warmup: int, steps_: int, repeats: int) -> None:
    """bf16 / float32 speed per model as ``train.precision: auto`` measures it."""
    from segbalance.config import load_config
    from segbalance.train import precision, steps

    print(f"{size}px, batch {batch}; {warmup} warm-up, then {steps_} steps taking turns")
    for model_name in models:
        cfg = load_config(None, {"model.name": model_name, "data.image_size": size})
        for rep in range(repeats):
            s = steps.time_train_steps(
                cfg, ["float32", "mixed_bfloat16"], batch, steps=steps_, warmup=warmup
            )
            ratio = s["float32"] / s["mixed_bfloat16"]
            pick = "mixed_bfloat16" if ratio >= precision.MIN_SPEEDUP else "float32"
            print(
                f"{model_name:16s} run {rep + 1}: float32 {s['float32'] * 1e3:.0f} ms, "
                f"mixed_bfloat16 {s['mixed_bfloat16'] * 1e3:.0f} ms a step: bf16 "
                f"{ratio:.2f}x float32 -> auto picks {pick}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet-small", "efficientnetb4"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "auto"])
    parser.add_argument("--jit", nargs="+", choices=["off", "on"], default=["off"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--precision-probe",
        action="store_true",
        help="time float32 and mixed_bfloat16 taking turns, as train's auto probe does",
    )
    parser.add_argument("--repeats", type=int, default=1, help="probe runs per model")
    args = parser.parse_args()
    if args.precision_probe:
        probe(args.models, args.size, args.batch, args.warmup, args.steps, args.repeats)
        return

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
            for jit in args.jit:
                speed = bench_one(
                    model_name, policy, args.size, args.batch, args.warmup, args.steps, jit == "on"
                )
                base = base or speed
                label = f"{requested} ({policy})" if requested == "auto" else policy
                print(
                    f"{model_name:16s} {label:28s} jit {jit:3s} {speed:8.2f} img/s  "
                    f"x{speed / base:.2f}",
                    flush=True,
                )
                results.append(
                    {
                        "model": model_name,
                        "precision": requested,
                        "policy": policy,
                        "jit_compile": jit == "on",
                        "img_s": speed,
                    }
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
