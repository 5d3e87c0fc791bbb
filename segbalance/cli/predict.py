"""``segbalance predict``: masks (and overlays, probabilities) for new images."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command

EXAMPLES = """
segbalance predict runs/exp/best.keras photos/ --out predictions
segbalance predict best.keras "shots/**/*.jpg" one.png --out out --overlay --probabilities
segbalance predict best.keras photos/ --out out --threshold 0.4 --batch-size 16
segbalance predict plain_keras.keras photos/ --out out --image-size 256 256 --threshold 0.5
segbalance predict multiclass.keras photos/ --out out --colors --overlay --probabilities

Output names: the input's full file name plus .png, mirrored below the inputs' common
folder (photos/a/x.jpg -> OUT/masks/a/x.jpg.png), so a.jpg and a.png never share a mask.

A multiclass model (trained with a classes file) writes label masks holding each class's
value from the classes file, --colors colour masks (the file's colours), --overlay the
classes tinted with a legend of class names, --probabilities one map per class
(OUT/probabilities/<class>/...).
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "predict",
        "Write masks at each image's original size (PNG 0/255; multiclass: class values) "
        "for files, folders (recursive) or globs; unreadable files are reported and skipped "
        "(exit 2). --out is checked first, and outputs of earlier runs are never inputs.",
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
        help="output folder: masks/, overlays/, probabilities/ mirror the inputs; never "
        "replaces files in a folder segbalance did not create",
    )
    parser.add_argument("--overlay", action="store_true", help="also write tinted overlays")
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write 8-bit probability maps (multiclass: one per class)",
    )
    parser.add_argument(
        "--colors",
        action="store_true",
        help="multiclass models: also write colour masks (OUT/colors/) in the classes' colours",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="probability threshold (default: model's; binary models only)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="network input size of a plain Keras model without segbalance metadata (give "
        "--threshold too; the model must take 0..255 RGB and output one logit channel)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="skip larger images; unset means prepare's cap, 80 Mpx",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from segbalance.data.check import DEFAULT_MAX_PIXELS
    from segbalance.errors import format_problems
    from segbalance.predict import predict

    result = predict(
        args.model,
        args.inputs,
        args.out,
        overlay=args.overlay,
        probabilities=args.probabilities,
        colors=args.colors,
        threshold=args.threshold,
        image_size=args.image_size,
        batch_size=args.batch_size,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
        progress=not args.quiet,
    )
    kinds = ["masks"] + ["colors"] * args.colors + ["overlays"] * args.overlay
    kinds += ["probabilities"] * args.probabilities
    print(f"wrote {len(result.written)} image(s) ({', '.join(kinds)}) under {args.out}")
    for reason, count in Counter(p.problem for p in result.ignored).items():
        first = next(p.file for p in result.ignored if p.problem == reason)
        print(f"ignored {count} file(s), {reason}: {first}" + (" ..." if count > 1 else ""))
    if result.failed:
        print(f"skipped {len(result.failed)} input(s):", file=sys.stderr)
        print(format_problems(result.failed), file=sys.stderr)
        return 2
    return 0
