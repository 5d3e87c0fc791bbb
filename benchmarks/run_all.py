"""Run every benchmark in turn (``make bench``); each prints its own side-by-side ratios.

Each benchmark runs in its own process so one's memory and thread pools cannot colour the
next. Benchmarks needing arguments get small defaults here; run them one by one for more.

Run:  python benchmarks/run_all.py [--only plan,drift]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default="",
        help="comma list: plan,drift,pipeline,groups,train,fit,workers,prepare",
    )
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="segbalance-bench-"))
    subprocess.run(
        [sys.executable, "-m", "segbalance", "synth", str(data), "--scale", "0.3", "--quiet"],
        check=True,
    )
    runs = {
        "plan": ["bench_plan.py"],
        "drift": ["bench_drift.py"],
        "prepare": ["bench_prepare.py", str(data)],
        "pipeline": ["bench_pipeline.py"],
        "groups": ["bench_groups.py", "--tutorial"],
        "train": ["bench_train.py"],
        "fit": ["bench_fit.py", "--scale", "0.3"],
        "workers": ["bench_workers.py"],
    }
    wanted = [w for w in args.only.split(",") if w] or list(runs)
    failed = []
    for name in wanted:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / runs[name][0]), *runs[name][1:]])
        print(
            f"--- {name}: exit {proc.returncode}, {time.perf_counter() - start:.0f} s", flush=True
        )
        if proc.returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
