"""``segbalance compare``: balancing strategies side by side on your data, same budget."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command
from segbalance.cli.train import add_config_flags, add_series_flags, check_bootstrap, overrides_from

# segbalance.compare.DEFAULT_STRATEGIES, spelled out so --help imports no TensorFlow
DEFAULT_STRATEGIES = ["proportional", "uniform", "sqrt", "adaptive"]

EXAMPLES = """
segbalance compare data/segbalance/manifest.csv --work-dir runs/cmp
segbalance compare manifest.csv --balance proportional uniform --epochs 10 --image-size 128
segbalance compare manifest.csv --test heldout/segbalance/manifest.csv   # a separate test set
segbalance compare manifest.csv --balance uniform adaptive:sqrt --config run.yaml
segbalance compare manifest.csv --work-dir runs/cmp      # again: finished runs are reused,
                                                         # a killed one resumes
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "compare",
        "Train one run per balancing strategy with the same model, budget and seed, evaluate "
        "each on the valid split (or --test) per group with bootstrap intervals, and name the "
        "strategy with the best worst-group IoU; writes compare.json and compare.png.",
        EXAMPLES,
        run,
    )
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest CSV (prepare)")
    parser.add_argument(
        "--balance",
        dest="strategies",
        nargs="+",
        default=DEFAULT_STRATEGIES,
        metavar="STRATEGY",
        help="strategies to compare, as train's --balance spells them",
    )
    parser.add_argument(
        "--test",
        type=Path,
        default=None,
        metavar="DATA",
        help="evaluate on this manifest CSV or data folder instead of the valid split",
    )
    add_series_flags(parser, "runs/compare", "one run folder per strategy")
    add_config_flags(parser, balance=False, fold=False, cluster=False)


def run(args: argparse.Namespace) -> int:
    from segbalance.compare import compare
    from segbalance.config import load_config

    check_bootstrap(args.bootstrap)
    cfg = load_config(args.config, overrides_from(args))
    summary = compare(cfg, args.strategies, args.work_dir, test=args.test, bootstrap=args.bootstrap)
    where = summary["evaluated_on"]
    print(f"\nIoU per group on {where['data']} ({where['split']}), 95% intervals in brackets")
    print(summary["table"])
    print(f"\nwritten: {args.work_dir / 'compare.json'}, {summary['figure']}")
    print(summary["verdict"])
    return 0
