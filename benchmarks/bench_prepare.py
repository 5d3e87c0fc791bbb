"""Pair checking speed: one thread vs a thread pool vs a process pool, side by side.

``segbalance prepare`` checks pairs on a thread pool (PIL decodes with the GIL released).
This prints pairs/s for each way on the same files in one run, so the ratio is what counts.

Run:  python benchmarks/bench_prepare.py DATA_ROOT [--workers N] [--repeat 2]
      (make data first: segbalance synth /tmp/nails --scale 0.3)
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from segbalance.data.check import PairCheck, check_pair, check_pairs, default_workers
from segbalance.data.discover import discover


def _one(pair: tuple[str, str]) -> PairCheck:
    return check_pair(pair[0], pair[1], pair)


def _processes(pairs: list[tuple[str, str]], workers: int) -> list[PairCheck]:
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_one, pairs, chunksize=16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    pairs = [(str(p.image), str(p.mask)) for p in discover(args.root).pairs]
    ways = {
        "1 thread": partial(check_pairs, pairs, pairs, workers=1, progress=False),
        f"{args.workers} threads": partial(
            check_pairs, pairs, pairs, workers=args.workers, progress=False
        ),
        f"{args.workers} processes": partial(_processes, pairs, args.workers),
    }
    best = {}
    for _ in range(args.repeat):  # interleaved so background load hits every way alike
        for name, run in ways.items():
            start = time.perf_counter()
            results = run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            assert len(results) == len(pairs)
    base = best["1 thread"]
    print(f"{len(pairs)} pairs, {args.workers} workers")
    for name, seconds in best.items():
        print(
            f"{name:>14}: {seconds:6.2f} s  {len(pairs) / seconds:7.1f} pairs/s  "
            f"speed-up x{base / seconds:.2f}"
        )


if __name__ == "__main__":
    main()
