"""Plan building speed and memory: an epoch of 10 million samples over 10,000 groups.

Target (issue 3): under 2 s and 300 MB per epoch. Printed side by side with the usual
row-level alternative, ``Generator.choice(rows, E, p=row_probability)`` (what a
WeightedRandomSampler does), which neither holds quotas nor spreads repeats.

Run:  python benchmarks/bench_plan.py [--rows 10000000] [--groups 10000] [--epoch-length E]
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from segbalance.sampling import SamplingPlan

TARGET_S, TARGET_MB = 2.0, 300.0


def group_ids(rows: int, groups: int, seed: int = 0) -> np.ndarray:
    """Zipf-like group sizes (a few huge groups, many small ones), rows in random order."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, groups + 1) ** 1.1
    sizes = np.maximum(1, np.floor(weights / weights.sum() * rows)).astype(np.int64)
    sizes[0] += rows - sizes.sum()
    return rng.permutation(np.repeat(np.arange(groups, dtype=np.int32), sizes))


def measure(fn: Callable[[], Any], twice: bool = True) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak MB of numpy/Python allocations) of ``fn``.

    CPU seconds are printed too because on a shared machine wall time mostly measures the
    other processes. With ``twice`` the times come from a run without tracing and the
    memory from a second run; otherwise one traced run gives all three.
    """
    gc.collect()
    if twice:
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        gc.collect()
    tracemalloc.start()
    start, cpu0 = time.perf_counter(), time.process_time()
    fn()
    if not twice:
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, cpu, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--epoch-length", type=int, default=10_000_000)
    args = parser.parse_args()
    ids = group_ids(args.rows, args.groups)
    names = [str(g) for g in range(args.groups)]
    sizes = np.bincount(ids)
    print(
        f"{args.rows:,} rows, {args.groups:,} groups (sizes {sizes.min()}..{sizes.max():,}), "
        f"epoch length {args.epoch_length:,}, uniform balance; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"{'what':<34} {'wall s':>7} {'CPU s':>7} {'peak MB':>8} {'CPU/2s':>7} {'MB/300':>7}")

    def row(what: str, seconds: float, cpu: float, mb: float) -> None:
        print(
            f"{what:<34} {seconds:7.2f} {cpu:7.2f} {mb:8.0f} {cpu / TARGET_S:7.2f} "
            f"{mb / TARGET_MB:7.2f}"
        )

    results = {}
    for mode in ("exact", "random"):
        holder: dict[str, SamplingPlan] = {}

        def build(mode: str = mode, holder: dict = holder) -> None:
            holder["plan"] = SamplingPlan(ids, names, mode=mode, epoch_length=args.epoch_length)

        row(f"{mode}: plan set-up (once per run)", *measure(build))
        plan = holder["plan"]
        for epoch in (0, 50):

            def fresh(plan: SamplingPlan = plan, epoch: int = epoch) -> None:
                plan._cache = None  # time a real build, not the plan's one-epoch cache
                plan._cum = (0, np.zeros_like(plan._n))
                plan.epoch(epoch)

            seconds, cpu, mb = measure(fresh)
            results[(mode, epoch)] = cpu
            row(f"{mode}: epoch {epoch} (fresh, no replay)", seconds, cpu, mb)

    rng = np.random.default_rng(0)
    plan = holder["plan"]
    row_p = (plan._p / np.maximum(plan._n, 1))[ids]
    row_p /= row_p.sum()
    seconds, cpu, mb = measure(
        lambda: rng.choice(len(ids), size=args.epoch_length, p=row_p), twice=False
    )
    row("baseline: rng.choice over rows", seconds, cpu, mb)
    print(
        f"CPU time of an epoch / baseline: exact {results[('exact', 0)] / cpu:.2f}x, "
        f"random {results[('random', 0)] / cpu:.2f}x"
    )


if __name__ == "__main__":
    main()
