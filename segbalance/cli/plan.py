"""``segbalance plan``: what a balancing choice does, before any training.

Per group: images, target probability, samples per epoch, how often each image is shown
per epoch on average (flagged when over-fitting is likely) and the realised counts of each
epoch. ``--json`` prints the same as one JSON object. With ``--balance adaptive[:BASE]``
it shows the base plan, which the first epoch samples; later epochs adapt to the groups'
losses during training, so only the run's history.csv (``weight_<g>``) can show them.
A multiclass manifest (``prepare --classes``) adds a table per class: the train images that
contain it, its pixel share, its loss weight (``loss.class_weights``) and how many samples
of an epoch are expected to contain it under this plan.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from segbalance.cli.common import add_command

EXAMPLES = """
segbalance plan data/segbalance/manifest.csv
segbalance plan manifest.csv --balance sqrt --epochs 3
segbalance plan manifest.csv --balance custom --weights 0=1,4=2 --json
segbalance plan manifest.csv --mode random --epochs 10 --batch-size 16 --seed 1
segbalance plan manifest.csv --config run.yaml   # exactly what 'segbalance train' will sample
segbalance plan manifest.csv --balance adaptive:sqrt   # the base plan; later epochs adapt
"""

# More epochs than this are summarised as min/max columns in the table (all are in --json).
MAX_EPOCH_COLUMNS = 8
DEFAULT_EPOCHS = 5


def register(sub: Any) -> None:
    """Add the ``plan`` subcommand."""
    p = add_command(
        sub,
        "plan",
        "Show the per-group sampling plan (quotas, repeats, mix of each epoch) of a "
        "balancing choice before training.",
        EXAMPLES,
        run,
    )
    p.add_argument("manifest", help="manifest CSV written by 'segbalance prepare'")
    # SUPPRESS: an option not given is absent, so the config (or its default) decides.
    p.add_argument(
        "--config", help="YAML config; the flags below override its keys", default=argparse.SUPPRESS
    )
    p.add_argument(
        "--balance",
        help="proportional | uniform | power:ALPHA | sqrt | custom | repeat-factor:T | "
        "adaptive[:BASE] (default: sampling.balance of the config, uniform)",
        default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--mode",
        choices=["exact", "random"],
        help="default: sampling.mode, exact",
        default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--weights",
        help="per-group multipliers GROUP=W,... such as 0=1,4=2 (unnamed groups keep 1; "
        "0 leaves a group out); required by --balance custom",
        default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--epochs",
        type=int,
        help=f"epochs to show (default: train.epochs of --config, else {DEFAULT_EPOCHS})",
        default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="global batch size (default: train.batch_size, 8)",
        default=argparse.SUPPRESS,
    )
    p.add_argument("--seed", type=int, help="default: train.seed, 0", default=argparse.SUPPRESS)
    p.add_argument(
        "--epoch-length",
        type=int,
        help="samples per epoch before rounding up to whole batches (default: train images)",
        default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--split",
        help="split to sample from (default: data.train_split, train)",
        default=argparse.SUPPRESS,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")


def run(args: argparse.Namespace) -> int:
    """Build the plan of the manifest's training split and print its report."""
    from segbalance.config import load_config
    from segbalance.data.manifest import read_manifest
    from segbalance.errors import UserError
    from segbalance.sampling import adaptive_base, parse_weights
    from segbalance.train.plan import class_report, training_plan, training_rows

    given = vars(args)  # options not given are absent (argparse.SUPPRESS)
    weights = parse_weights(given["weights"]) if "weights" in given else None
    config = given.get("config")
    cfg = load_config(
        config,
        {
            "sampling.balance": given.get("balance"),
            "sampling.mode": given.get("mode"),
            "sampling.weights": weights,
            "train.batch_size": given.get("batch_size"),
            "train.seed": given.get("seed"),
            "data.epoch_length": given.get("epoch_length"),
            "data.train_split": given.get("split"),
        },
    )
    epochs = given.get("epochs", cfg.train.epochs if config else DEFAULT_EPOCHS)
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    full = read_manifest(args.manifest, check_files=False)
    split = cfg.data.train_split
    # The same rows and plan as 'segbalance train' (data.groups, sample weights included).
    rows = training_rows(cfg, full)
    if len(rows) == 0:
        present = sorted(set(full.split))
        raise UserError(
            f"manifest {args.manifest} has no rows in split '{split}'"
            + (f" for groups {cfg.data.groups}" if cfg.data.groups else "")
            + f"; splits present: {', '.join(present)} (choose one with --split)"
        )
    batch = cfg.train.batch_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan, _ = training_plan(cfg, rows)
        report = plan.report(epochs)
    notes = [str(w.message) for w in caught] + report["warnings"]
    report.update(
        manifest=str(args.manifest),
        split=split,
        batch_size=batch,
        steps_per_epoch=plan.steps(batch),
        warnings=notes,
    )
    classes = class_report(cfg, rows, plan)
    if classes is not None:
        report["classes"] = classes
    base = adaptive_base(cfg.sampling.balance)
    if base is not None:
        report["adaptive"] = {
            "base": base,
            "note": f"epoch 0 samples the base plan ({base}); later epochs adapt to "
            f"{cfg.sampling.adaptive_signal} during training and are recorded in the run's "
            "history.csv (weight_<group>), so the epochs shown here are the base plan's",
        }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    return 0


def _table(rows: list[list[str]]) -> str:
    from segbalance.text import format_table

    return format_table(rows[0], rows[1:])


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of :func:`run` (one row per group).

    Example output::

        group  images  target  per epoch  shown/image  e0   e1
        0         749  0.2000      221.0         0.30  221  221
        4          34  0.2000      221.0         6.50  221  221
    """
    epochs = report["epochs"]
    wide = len(epochs) <= MAX_EPOCH_COLUMNS
    head = ["group", "images", "target", "per epoch", "shown/image"]
    head += [f"e{x['epoch']}" for x in epochs] if wide else ["min", "max"]
    rows = [head]
    for g in report["groups"]:
        seen = [x["counts"][g["name"]] for x in epochs]
        flag = " !" if g["repeat_warning"] else ""
        rows.append(
            [
                g["name"],
                str(g["images"]),
                f"{g['target']:.4f}",
                f"{g['samples_per_epoch']:.1f}",
                f"{g['showings_per_image']:.2f}{flag}",
                *(
                    map(str, seen)
                    if wide
                    else [str(min(seen, default=0)), str(max(seen, default=0))]
                ),
            ]
        )
    top = (
        f"{report['manifest']} split '{report['split']}': {report['rows']} images, "
        f"{len(report['groups'])} groups\n"
        f"balance {report['balance']}, mode {report['mode']}, seed {report['seed']}: "
        f"{report['epoch_length']} samples per epoch = {report['steps_per_epoch']} steps of "
        f"{report['batch_size']}"
    )
    foot = []
    if not wide:
        foot.append(f"min/max of the realised counts over {len(epochs)} epochs (each: --json)")
    if any(g["repeat_warning"] for g in report["groups"]):
        foot.append("! each image of this group is shown many times per epoch: may over-fit")
    if "adaptive" in report:
        foot.append(f"adaptive: {report['adaptive']['note']}")
    parts = [top, "", _table(rows), *foot]
    if "classes" in report:
        parts += ["", format_classes(report["classes"])]
    return "\n".join(parts)


def format_classes(section: dict[str, Any]) -> str:
    """The per-class table of a multiclass manifest (see the module doc)."""
    rows = [["class", "images", "pixel share", "weight", "per epoch"]]
    for name, c in section["classes"].items():
        weight = "1" if c["weight"] is None else f"{c['weight']:.3g}"
        rows.append(
            [
                name,
                str(c["images"]),
                f"{c['pixel_share']:.4f}",
                weight,
                f"{c['samples_per_epoch']:.1f}",
            ]
        )
    source = section["weights"] or "none: all 1"
    notes = [
        "images: train images containing the class; per epoch: expected samples containing it",
        f"weight: the loss's class weight (loss.class_weights: {source})",
    ]
    return "\n".join([_table(rows), *notes])
