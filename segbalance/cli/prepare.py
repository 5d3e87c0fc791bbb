"""``segbalance prepare``: find, check and split image/mask pairs; write the manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from segbalance.cli.common import add_command

# segbalance.data.check.CHANNELS, spelled out so building the parser imports no numpy/PIL
MASK_CHANNELS = ("gray", "red", "green", "blue", "alpha")
# segbalance.data.mask_rules.LABEL_RULES and segbalance.data.class_groups.GROUP_BY, likewise
MASK_RULES = ("labels",)
GROUP_BY = ("folder", "rarest-class", "folder+rarest-class")

EXAMPLES = """
segbalance prepare data/nails
segbalance prepare data/nails --valid-fraction 0.25 --seed 1 --out runs/nails.csv
segbalance prepare data/messy --skip-invalid          # leave bad pairs out, list them
segbalance prepare data/flat --groups groups.csv      # images/ + masks/, groups from a CSV
segbalance prepare data/tutorial                      # Images/, Masks/, csv_file/train*.csv
segbalance prepare data/jpeg --mask-threshold 127     # JPEG/anti-aliased masks: > 127 is fg
segbalance prepare data/cutouts --mask-channel alpha  # foreground drawn in the alpha channel
segbalance prepare data/nails --folds 5               # + group-stratified folds (train/cv --fold)
segbalance prepare data/nails --selection-fraction 0.1  # + a 'select' split for the best epoch
segbalance prepare data/cells --mask-rule labels      # instance ids (0 background) as > 0
segbalance prepare data/parts --classes classes.yaml  # multiclass label masks
segbalance prepare data/parts --classes classes.yaml --group-by rarest-class

Layouts (folder names case-insensitive):
  a  Images/<group>/...  + Masks/<group>/...
  b  train|valid/images|masks/[<group>/]...    (split from the folders)
  c  images/ + masks/ (one group, or --groups CSV with columns image,group)
  d  csv_file/train.csv, valid.csv, train<g>.csv with an 'images' column (paths relative
     to images/ or train/images/, a leading '/' too, as the tutorial writes them; an
     optional 'train' column of 1/0 gives the split)
Pairs match by relative path and stem across .png .jpg .jpeg .bmp .tif .tiff.

Classes file (--classes; the first class is the background):
  classes:
    - {name: background, value: 0}
    - {name: nail, value: 1, color: [255, 0, 0]}
    - {name: skin, value: 2, color: [0, 255, 0]}
  ignore: 255          # optional: pixels never counted in losses or metrics
value: the gray level (or palette index) of a label mask; color: the RGB of a colour mask.
A value or colour no class names is refused, so are JPEG label masks. The classes go into
the manifest's sidecar: train, evaluate and predict read them from there.
--group-by rarest-class: each image's group is the rarest foreground class it contains
(rarity: share of train images containing it; ties: lower train pixel share, then the
class listed later; no foreground class: group 'none'). The split is stratified by those
groups first, then rarity is measured on its train images.
"""


def _mask_threshold(text: str) -> float:
    """--mask-threshold: a number in [0, 255), on the 0..255 scale (16-bit masks / 257)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 <= value < 255.0:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"{text} is outside 0..255 (exclusive of 255); values above it are foreground, "
            "on the 0..255 scale (16-bit masks are read / 257)"
        )
    return value


def _mask_channel(text: str) -> str:
    from segbalance.errors import unknown_name_error

    if text not in MASK_CHANNELS:
        error = unknown_name_error("mask channel", text, MASK_CHANNELS)
        raise argparse.ArgumentTypeError(str(error))
    return text


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "prepare",
        "Find image/mask pairs and their groups, check every pair (decode, sizes, binary "
        "masks, or class values with --classes) and write a manifest CSV; any problem is "
        "listed and nothing is written.",
        EXAMPLES,
        run,
    )
    parser.add_argument("root", type=Path, metavar="DATA_ROOT", help="folder holding the data")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="manifest CSV; None means DATA_ROOT/segbalance/manifest.csv",
    )
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.2,
        help="share of each group for validation when the layout gives no split",
    )
    parser.add_argument(
        "--selection-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="also move this share of each group from its train rows to a 'select' split "
        "that picks the best epoch (train uses it when the manifest has it): with --balance "
        "adaptive the valid split drives the group weights, and choosing the epoch on the "
        "same images would flatter it; 0: none",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="fixes the train/valid split (and the folds)"
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="also record K group-stratified cross-validation folds (a fold column; test "
        "rows in none) for 'train --fold k' and 'segbalance cv'; 0: none",
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="leave bad pairs out and list them in <manifest>_rejects.csv instead of stopping",
    )
    parser.add_argument(
        "--groups", type=Path, default=None, metavar="CSV", help="image,group CSV for layout c"
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept files outside DATA_ROOT: absolute or '..' paths in tutorial CSVs (stored "
        "absolute), symlinks leading out; recorded in the manifest's sidecar, so later "
        "commands accept its rows too",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="threads checking pairs; None means every core"
    )
    parser.add_argument(
        "--max-pixels",
        type=float,
        default=80e6,
        help="refuse images with more pixels (decompression bombs)",
    )
    parser.add_argument(
        "--mask-threshold",
        type=_mask_threshold,
        default=None,
        metavar="T",
        help="read masks whose encoding needs a rule (JPEG, anti-aliased, ...) by 'values "
        "above T are foreground' (0..255 scale; colour: the brightest channel, unless "
        "--mask-channel names one); unambiguous masks (0/255, 0/1, black + one colour) keep "
        "their own rule",
    )
    parser.add_argument(
        "--mask-channel",
        type=_mask_channel,
        default=None,
        metavar="|".join(MASK_CHANNELS),
        help="read masks whose encoding needs a rule from this channel only, where they have "
        "it (alpha for cut-outs; red, green, blue for colour masks on a coloured background); "
        "above 0, or above --mask-threshold; unambiguous masks keep their own rule",
    )
    parser.add_argument(
        "--mask-rule",
        choices=MASK_RULES,
        default=None,
        help="labels: instance-label masks (0 background, 1..N one id per object, 8- or "
        "16-bit, as nuclei/cell data store them) read as binary, every id > 0 foreground",
    )
    parser.add_argument(
        "--classes",
        type=Path,
        default=None,
        metavar="YAML",
        help="multiclass: a classes file (below) every mask is checked against; the manifest "
        "records each class's pixel share per image (coverage_<name> columns)",
    )
    parser.add_argument(
        "--group-by",
        choices=GROUP_BY,
        default="folder",
        help="folder: the layout's groups; rarest-class: the rarest foreground class each "
        "image contains (needs --classes); folder+rarest-class: both, e.g. '3/skin'",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from segbalance.data.check import MaskChoice
    from segbalance.data.prepare import prepare_dataset
    from segbalance.errors import UserError

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers} must be at least 1")
    if args.max_pixels <= 0:
        raise UserError(f"--max-pixels {args.max_pixels} must be positive")
    labels = args.mask_rule == "labels"
    if labels and args.classes is not None:
        raise UserError(
            "--mask-rule labels reads instance masks as binary (> 0) and --classes reads "
            "class values: choose one"
        )
    if labels and (args.mask_threshold is not None or args.mask_channel is not None):
        raise UserError(
            "--mask-rule labels reads every mask as > 0: leave out --mask-threshold and "
            "--mask-channel"
        )
    result = prepare_dataset(
        args.root,
        args.out,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        skip_invalid=args.skip_invalid,
        groups_csv=args.groups,
        allow_outside_root=args.allow_outside_root,
        workers=args.workers,
        max_pixels=int(args.max_pixels),
        progress=False if args.quiet else None,
        mask_choice=MaskChoice(args.mask_threshold, args.mask_channel, labels),
        folds=args.folds,
        selection_fraction=args.selection_fraction,
        classes=args.classes,
        group_by=args.group_by,
    )
    print(result.summary_table())
    if result.rejects:
        print(
            f"segbalance prepare: {len(result.rejects)} item(s) skipped (--skip-invalid); "
            f"see {result.rejects_path}",
            file=sys.stderr,
        )
    return 0
