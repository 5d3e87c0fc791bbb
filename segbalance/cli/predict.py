"""``segbalance predict``: masks (and overlays, probabilities) for new images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command

EXAMPLES = """
segbalance predict runs/exp/best.keras photos/ --out predictions
segbalance predict best.keras "shots/**/*.jpg" one.png --out out --overlay --probabilities
segbalance predict best.keras photos/ --out out --threshold 0.4 --batch-size 16
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "predict",
        "Write masks at each image's original size (PNG 0/255) for files, folders "
        "(recursive) or globs; unreadable files are reported and skipped (exit 2).",
        EXAMPLES,
        run,
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a .keras file from train")
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUTS", help="image files, folders or glob patterns"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: masks/, overlays/, probabilities/ mirror the inputs",
    )
    parser.add_argument("--overlay", action="store_true", help="also write tinted overlays")
    parser.add_argument(
        "--probabilities", action="store_true", help="also write 8-bit probability maps"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="probability threshold (default: model's)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from segbalance.errors import format_problems
    from segbalance.predict import predict

    result = predict(
        args.model,
        args.inputs,
        args.out,
        overlay=args.overlay,
        probabilities=args.probabilities,
        threshold=args.threshold,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    kinds = ["masks"] + ["overlays"] * args.overlay + ["probabilities"] * args.probabilities
    print(f"wrote {len(result.written)} image(s) ({', '.join(kinds)}) under {args.out}")
    if result.ignored:
        print(f"ignored {len(result.ignored)} file(s) under --out {args.out} (earlier outputs)")
    if result.failed:
        print(f"skipped {len(result.failed)} input(s):", file=sys.stderr)
        print(format_problems(result.failed), file=sys.stderr)
        return 2
    return 0
