"""``segbalance cv``: group-stratified K-fold cross-validation of one training config."""

from __future__ import annotations

import argparse
from typing import Any

from segbalance.cli.common import add_command
from segbalance.cli.train import add_config_flags, add_series_flags, check_bootstrap, overrides_from

EXAMPLES = """
segbalance prepare data/nails --folds 5      # record the folds first
segbalance cv data/nails/segbalance/manifest.csv --folds 5 --work-dir runs/cv
segbalance cv manifest.csv --folds 5 --balance sqrt --epochs 10
segbalance cv manifest.csv --work-dir runs/cv   # again: finished folds reused, a killed one resumes
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "cv",
        "Train one run per fold of the manifest (prepare --folds K), validating on that fold, "
        "and report per group the IoU mean and spread over the folds and the pooled "
        "out-of-fold IoU with a bootstrap interval; writes cv.json.",
        EXAMPLES,
        run,
    )
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest CSV with folds (prepare)")
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="the number of folds expected (checked against the manifest's); default: its own",
    )
    add_series_flags(parser, "runs/cv", "one run folder per fold (fold<k>)")
    add_config_flags(parser, fold=False, cluster=False)


def run(args: argparse.Namespace) -> int:
    from segbalance.config import load_config
    from segbalance.cv import RESULT, cross_validate

    check_bootstrap(args.bootstrap)
    cfg = load_config(args.config, overrides_from(args))
    summary = cross_validate(cfg, args.work_dir, folds=args.folds, bootstrap=args.bootstrap)
    print(f"\nIoU per group over {len(summary['folds'])} folds (each fold's model on its fold)")
    print(summary["table"])
    print(f"\nwritten: {args.work_dir / RESULT}")
    return 0
