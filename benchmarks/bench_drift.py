"""Group mix per epoch: the tutorial's recipe (simulated) vs SamplingPlan.

The tutorial builds one dataset per group, repeats each ``count=epochs`` times (shuffled)
and mixes them with ``tf.data.Dataset.sample_from_datasets`` at equal weights and
``stop_on_empty_dataset=False``: an exhausted group is dropped and the others share its
weight. Training then takes ``ceil(images / batch)`` batches per epoch. Simulated here in
numpy (only the group of each sample matters) with the tutorial's counts, uniform
weights, batch 16, 10 epochs, next to SamplingPlan in exact and random mode.

Run:  python benchmarks/bench_drift.py [--epochs 10] [--batch-size 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from segbalance.sampling import SamplingPlan

SIZES = [749, 144, 126, 52, 34]


def tutorial_recipe(sizes: list[int], epochs: int, steps: int, batch: int, seed: int) -> list:
    """Group id of every sample of every epoch (shorter epochs once the data runs out)."""
    rng = np.random.default_rng(seed)
    left = np.array(sizes) * epochs  # items each repeated stream still holds
    out: list[np.ndarray] = []
    for _ in range(epochs):
        epoch = []
        for _ in range(steps * batch):
            alive = np.flatnonzero(left > 0)
            if alive.size == 0:
                break  # every dataset exhausted: the epoch ends early
            g = alive[rng.integers(alive.size)]  # equal weights renormalised over the rest
            left[g] -= 1
            epoch.append(g)
        out.append(np.array(epoch, dtype=np.int64))
    return out


def plan_epochs(sizes: list[int], epochs: int, steps: int, batch: int, mode: str, seed: int):
    ids = np.repeat(np.arange(len(sizes)), sizes)
    plan = SamplingPlan(
        ids, [str(g) for g in range(len(sizes))], mode=mode, seed=seed, epoch_length=steps * batch
    )
    return [ids[plan.epoch(e)] for e in range(epochs)]


def describe(name: str, epochs: list[np.ndarray], groups: int, batch: int) -> None:
    print(f"\n{name}")
    print(
        f"{'epoch':>5} {'samples':>7}  "
        + " ".join(f"{'g' + str(g):>6}" for g in range(groups))
        + "  batches only group 0"
    )
    for e, labels in enumerate(epochs):
        share = np.bincount(labels, minlength=groups) / max(1, len(labels))
        whole = len(labels) // batch
        only0 = sum(bool((labels[b * batch : (b + 1) * batch] == 0).all()) for b in range(whole))
        cells = " ".join(f"{s:6.3f}" for s in share)
        print(f"{e:>5} {len(labels):>7}  {cells}  {only0:>4}/{whole}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = math.ceil(sum(SIZES) / args.batch_size)
    print(
        f"groups {SIZES}, uniform target 0.200 each, batch {args.batch_size}, "
        f"{steps} steps per epoch ({steps * args.batch_size} samples), {args.epochs} epochs"
    )
    runs = {
        "tutorial recipe (per-group repeat(count=epochs) + sample_from_datasets)": tutorial_recipe(
            SIZES, args.epochs, steps, args.batch_size, args.seed
        ),
        "SamplingPlan exact": plan_epochs(
            SIZES, args.epochs, steps, args.batch_size, "exact", args.seed
        ),
        "SamplingPlan random": plan_epochs(
            SIZES, args.epochs, steps, args.batch_size, "random", args.seed
        ),
    }
    for name, epochs in runs.items():
        describe(name, epochs, len(SIZES), args.batch_size)
    print("\nworst deviation of a group's share from 0.200 in the last epoch:")
    for name, epochs in runs.items():
        last = np.bincount(epochs[-1], minlength=len(SIZES)) / max(1, len(epochs[-1]))
        print(f"  {name.split(' (')[0]:<20} {np.abs(last - 0.2).max():.3f}")


if __name__ == "__main__":
    main()
