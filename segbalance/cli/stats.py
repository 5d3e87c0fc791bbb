"""``segbalance stats``: per-group counts, mask coverage and image sizes of a manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command
from segbalance.errors import UserError

EXAMPLES = """
segbalance stats data/nails/segbalance/manifest.csv
segbalance stats manifest.csv --json stats.json --plot stats.png
segbalance stats manifest.csv --root /data/nails
"""


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "stats",
        "Describe a manifest per group: images (per split), mask coverage (mean, median, "
        "10th/90th percentiles), empty masks and image sizes, and for a multiclass manifest "
        "the images containing each class and its pixel share; as a table, JSON and a "
        "figure. Reads only the manifest CSV, not the images.",
        EXAMPLES,
        run,
    )
    parser.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest CSV")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers here")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="also draw counts and coverage per group"
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="data root; None: as recorded with the manifest"
    )


def check_root(root: Path | None) -> None:
    """Refuse a ``--root`` that is missing or a file (else every path would be wrong)."""
    if root is None:
        return
    if not root.exists():
        raise UserError(
            f"--root {root} does not exist; give the folder the manifest's paths are "
            "relative to, or leave --root out to use the one recorded with the manifest"
        )
    if not root.is_dir():
        raise UserError(f"--root {root} is a file; give the data folder (DATA_ROOT)")


def run(args: argparse.Namespace) -> int:
    from segbalance.data.manifest import read_manifest
    from segbalance.data.stats import (
        check_stats_outputs,
        compute_stats,
        format_stats_table,
        plot_stats,
        write_stats_json,
    )

    check_root(args.root)
    check_stats_outputs(args.json, args.plot)  # before any work or output
    manifest = read_manifest(args.manifest, root=args.root, check_files=False)
    stats = compute_stats(manifest)
    stats["manifest"] = str(args.manifest)
    print(format_stats_table(stats))
    if args.json is not None:
        print(f"wrote {write_stats_json(stats, args.json)}")
    if args.plot is not None:
        print(f"wrote {plot_stats(stats, args.plot)}")
    return 0
