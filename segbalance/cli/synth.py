"""``segbalance synth``: write the built-in nail-like data set (tutorial layout, 5 groups)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command

EXAMPLES = """
segbalance synth data/nails
segbalance synth data/small --scale 0.1 --size 128 --seed 1
segbalance synth data/nails --overwrite
segbalance synth data/rings --classes --scale 0.2 --size 128   # 3 classes: + a rare ring
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "synth",
        "Write the built-in synthetic nail data set: OUT/Images/<g>/*.png and "
        "OUT/Masks/<g>/*.png, groups 0-4 with 749/144/126/52/34 x SCALE images, "
        "each group with its own look.",
        EXAMPLES,
        run,
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="folder to write the data set into")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the group sizes (at least 3 each)"
    )
    parser.add_argument("--size", type=int, default=384, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a data set synth wrote in OUT (never files it did not write)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes drawing images; 0: up to 2 (the cores)"
    )
    parser.add_argument(
        "--classes",
        action="store_true",
        help="the 3-class version: background, nail and a metal ring, rare and mostly in the "
        "small groups 3 and 4; label masks (0, 1, 2) and OUT/classes.yaml",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from segbalance.data.synth import CLASSES_NAME, STYLES, generate
    from segbalance.io import json_object

    start = time.perf_counter()
    counts = generate(
        args.out,
        scale=args.scale,
        size=args.size,
        seed=args.seed,
        progress=not args.quiet,
        overwrite=args.overwrite,
        workers=args.workers or None,
        classes=args.classes,
    )
    seconds = time.perf_counter() - start
    info = (json_object(args.out / "synth.json") or {}) if args.classes else {}
    rings = info.get("ring_images") or {}
    ring_head = f" {'ring':>5}" if args.classes else ""
    print(f"{'group':<6} {'images':>6}{ring_head}  look")
    for group, n in counts.items():
        ring = f" {rings.get(group, 0):>5}" if args.classes else ""
        print(f"{group:<6} {n:>6}{ring}  {STYLES[group].description}")
    total = sum(counts.values())
    ring = f" {sum(rings.values()):>5}" if args.classes else ""
    print(f"{'total':<6} {total:>6}{ring}  written to {args.out} in {seconds:.1f} s")
    for stale in sorted((args.out / "segbalance").glob("*.csv")):
        # a manifest of the previous data describes masks that no longer exist
        print(f"warning: {stale} describes the old data; prepare again", file=sys.stderr)
    if args.classes:
        classes = args.out / CLASSES_NAME
        print(f"classes: {classes} (0 background, 1 nail, 2 ring; 'ring': images showing one)")
        print(f"next: segbalance prepare {args.out} --classes {classes} --group-by rarest-class")
    else:
        print(f"next: segbalance prepare {args.out}")
    return 0
