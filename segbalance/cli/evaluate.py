"""``segbalance evaluate``: per-group IoU/Dice/precision/recall of a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command

EXAMPLES = """
segbalance evaluate runs/exp/best.keras data/segbalance/manifest.csv --split valid
segbalance evaluate runs/exp/best.keras data/nails --json runs/exp/eval.json
segbalance evaluate best.keras manifest.csv --threshold 0.4 --batch-size 16
segbalance evaluate best.keras manifest.csv --bootstrap 0     # no intervals (faster)

A multiclass model (trained with a classes file) is evaluated on data with the same classes:
the table shows each group's IoU per class, and a group's iou is the mean over its
foreground classes (background excluded); a class absent from a group (no true and no
predicted pixel) shows '-' (null in --json) and is left out of that mean.
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "evaluate",
        "Evaluate a trained model per group at each mask's original size (image size, "
        "threshold and groups come from the model file).",
        EXAMPLES,
        run,
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a .keras file from train")
    parser.add_argument(
        "data",
        type=Path,
        metavar="DATA",
        help="manifest CSV, or a data root (checked on the fly, nothing written)",
    )
    parser.add_argument(
        "--split",
        choices=("train", "valid", "select", "test", "all"),
        default="all",
        help="rows to evaluate",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="probability threshold (default: model's; binary models only)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the result to this file (its folder is created; checked first)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="replicates of the 95%% intervals of each group's IoU (0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="fixes the bootstrap replicates")


def run(args: argparse.Namespace) -> int:
    from segbalance.artifacts import read_meta
    from segbalance.errors import UserError
    from segbalance.evaluate import check_result_target, evaluate, format_evaluation, write_json
    from segbalance.io import check_output_path

    # A bad model file or --json fails now, not after checking data or the whole evaluation.
    read_meta(args.model)
    if args.json is not None:
        check_output_path(args.json, "--json", folder=False)
        check_result_target(args.json)  # e.g. the manifest's sidecar given by mistake
    result = evaluate(
        args.model,
        args.data,
        split=args.split,
        threshold=args.threshold,
        batch_size=args.batch_size,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    print(f"{args.model} on {args.data} (split {args.split}, {result['rows']} images)")
    print(format_evaluation(result))
    if args.json is not None:
        try:
            write_json(result, args.json)
        except OSError as err:  # a full disk, or the folder changed since the check
            raise UserError(
                f"--json {args.json}: cannot write it ({err.strerror or err}); nothing was "
                "written there. Free space or choose another --json (the table is above)"
            ) from err
        print(f"wrote {args.json}")
    return 0
