"""``segbalance demo``: synth -> prepare -> stats -> train twice -> held-out comparison."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command

EXAMPLES = """
segbalance demo --work-dir runs/demo
segbalance demo --work-dir runs/demo-quick --quick
segbalance demo --task multiclass --work-dir runs/demo-multiclass
"""
DEFAULT_DIRS = {"binary": Path("runs/demo"), "multiclass": Path("runs/demo-multiclass")}


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "demo",
        "Show what group balancing does on built-in synthetic data: train unet-small with "
        "'proportional' and with 'uniform' sampling on the same budget, and compare them per "
        "group on a separate held-out set (measured on quiet 2-core CPUs: 2.5 to 5 minutes; "
        "--quick 1 to 2). --task multiclass: the 3-class set (background, nail, a rare ring) "
        "grouped by rarest class, compared per class and per group.",
        EXAMPLES,
        run,
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where everything is written (default runs/demo, or runs/demo-multiclass)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer epochs")
    parser.add_argument(
        "--task",
        choices=tuple(DEFAULT_DIRS),
        default="binary",
        help="binary (nails) or multiclass (nails and a rare ring, groups by rarest class)",
    )


def run(args: argparse.Namespace) -> int:
    work_dir = args.work_dir or DEFAULT_DIRS[args.task]
    if args.task == "multiclass":
        from segbalance import demo_multiclass

        summary = demo_multiclass.run_multiclass_demo(work_dir, quick=args.quick)
        print("\nHeld-out IoU per group and class (both runs: same model, seed, epochs, steps)")
        print(summary["table"])
        print(f"\n{demo_multiclass.verdict(summary)}")
    else:
        from segbalance.demo import run_demo, verdict

        summary = run_demo(work_dir, quick=args.quick)
        print("\nHeld-out IoU per group (both runs: same model, seed, epochs and steps)")
        print(summary["table"])
        print(f"\n{verdict(summary)}")
    files = summary["files"]
    print(f"\nwritten under {work_dir}:")
    if "stats" in files:
        print(f"  data statistics     {files['stats']}")
    print(f"  comparison figure   {files['comparison']}")
    for balance, where in files["runs"].items():
        print(f"  {balance:<19} {where}/best.keras, history.csv, heldout.json")
    print(f"  summary             {Path(work_dir) / 'demo.json'}")
    print(f"total {summary['seconds']['total']:.0f} s")
    return 0
