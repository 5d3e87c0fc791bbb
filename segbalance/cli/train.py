"""``segbalance train``: train a model on a manifest, resumable, on one or many devices."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from segbalance.cli.common import add_command
from segbalance.errors import UserError

EXAMPLES = """
segbalance train data/nails/segbalance/manifest.csv --work-dir runs/nails
segbalance train manifest.csv --model efficientnetb4 --image-size 384 --epochs 30 --balance uniform
segbalance train manifest.csv --balance power:0.5 --weights 4=2 --precision mixed_bfloat16
segbalance train manifest.csv --config run.yaml --set train.early_stopping_patience=5
segbalance train --work-dir runs/nails --resume         # continue a killed run
segbalance train manifest.csv --fold 2                  # validate on fold 2 (prepare --folds K)
segbalance train manifest.csv --set loss.name=ce+dice --set loss.class_weights=auto   # classes
segbalance train manifest.csv --devices 0,1             # MirroredStrategy on two GPUs
segbalance train manifest.csv --workers h1:2222,h2:2222 --worker-index 0   # on each machine
segbalance train --print-config > run.yaml              # every key with its default
"""

# flag (argparse dest) -> dotted config key
FLAG_KEYS = {
    "model": "model.name",
    "image_size": "data.image_size",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "balance": "sampling.balance",
    "mode": "sampling.mode",
    "lr": "optimizer.lr",
    "precision": "train.precision",
    "seed": "train.seed",
    "fold": "data.fold",
    "devices": "distribute.devices",
    "worker_index": "distribute.worker_index",
}


def register(sub: Any) -> None:
    parser = add_command(
        sub,
        "train",
        "Train a segmentation model with group-balanced sampling; writes best.keras, "
        "checkpoints, history.csv, TensorBoard logs and metrics.json into the work dir.",
        EXAMPLES,
        run,
    )
    parser.add_argument(
        "manifest", nargs="?", default=None, metavar="MANIFEST", help="manifest CSV (prepare)"
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML config (any subset)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/train"), help="run folder")
    add_config_flags(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in --work-dir")
    parser.add_argument("--overwrite", action="store_true", help="delete --work-dir's run first")
    parser.add_argument(
        "--print-config", action="store_true", help="print the full config and exit"
    )


def add_config_flags(
    parser: Any, *, balance: bool = True, fold: bool = True, cluster: bool = True
) -> None:
    """The config-override flags of ``train`` (shared by ``compare`` and ``cv``) and --set.

    Args:
        parser: the subcommand's parser.
        balance: add --balance (``compare`` has its own list of strategies).
        fold: add --fold (``cv`` runs every fold itself).
        cluster: add --workers and --worker-index (multi-worker runs).
    """
    overrides = parser.add_argument_group(
        "config overrides", "each flag sets one config key (default: the config's value)"
    )

    def override(flag: str, help: str, **kw: Any) -> None:
        dest = flag.lstrip("-").replace("-", "_")
        extra = {"weights": "sampling.weights", "workers": "distribute.workers"}
        key = FLAG_KEYS.get(dest, extra.get(dest, ""))
        overrides.add_argument(flag, default=argparse.SUPPRESS, help=f"{help} [{key}]", **kw)

    override("--model", "model name, e.g. unet-small, efficientnetb4")
    override("--image-size", "square input size, a multiple of 32", type=int)
    override("--epochs", "epochs to train", type=int)
    override("--batch-size", "global batch size (split over replicas)", type=int)
    if balance:
        override(
            "--balance",
            "proportional | uniform | power:A | sqrt | custom | repeat-factor:T | adaptive[:BASE]",
        )
    override("--mode", "exact quotas or random draws", choices=["exact", "random"])
    override("--weights", "per-group weights, e.g. 0=1,4=2")
    override("--lr", "peak learning rate", type=float)
    override(
        "--precision",
        "auto: float16 on GPUs, bfloat16 on CPUs that have it, else float32",
        choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"],
    )
    override("--seed", "fixes plan, augmentation and initialisation", type=int)
    if fold:
        override(
            "--fold",
            "validate on fold K and train on the others (needs 'prepare --folds')",
            type=int,
            metavar="K",
        )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config key, e.g. --set train.checkpoint_every_steps=50 (repeatable)",
    )
    override("--devices", "GPU ids, e.g. 0,1 (cpu:2: two logical CPUs, for tests)")
    if cluster:
        override("--workers", "host:port of every worker, in order (comma-separated)")
        override("--worker-index", "this machine's index in --workers", type=int)


def add_series_flags(parser: Any, work_dir: str, folders: str) -> None:
    """--work-dir, --bootstrap and --config of the commands that train a series of runs.

    Args:
        parser: the subcommand's parser (``compare``, ``cv``).
        work_dir: the default --work-dir.
        folders: what its run folders are, for the help.
    """
    parser.add_argument("--work-dir", type=Path, default=Path(work_dir), help=folders)
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="replicates of the 95%% intervals (0: none)"
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML config (any subset)")


def check_bootstrap(value: int) -> None:
    """Refuse a negative --bootstrap before any run starts."""
    if value < 0:
        raise UserError(f"--bootstrap must be >= 0 (0: no intervals), got {value}")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "data.groups=[0, 1]"]`` -> dotted overrides (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set {item!r}: write SECTION.KEY=VALUE, e.g. train.epochs=3")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({err})") from err
    return out


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides from the flags (None means not given)."""
    from segbalance.sampling import parse_weights

    out = parse_set(args.set)
    # Only flags actually given: an absent flag must not undo a --set of the same key.
    given = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if hasattr(args, flag)}
    out.update(given)
    if args.manifest is not None:
        out["data.manifest"] = str(Path(args.manifest).resolve())
    if getattr(args, "weights", None) is not None:
        out["sampling.weights"] = parse_weights(args.weights)
    if getattr(args, "workers", None) is not None:
        out["distribute.workers"] = [w.strip() for w in args.workers.split(",") if w.strip()]
    return out


def build_config(args: argparse.Namespace) -> Any:
    """The run's Config: --config (or, with --resume, the run's config.yaml) plus flags."""
    from segbalance.config import load_config

    base = args.config
    if args.resume and base is None:
        base = args.work_dir / "config.yaml"
        if not base.is_file():
            raise UserError(
                f"nothing to resume in {args.work_dir}: it has no config.yaml. "
                "Start a new run without --resume"
            )
    # The cluster belongs to this invocation, not to the run: a resumed run gets the devices
    # and workers given now (none: one device), never the old cluster's addresses.
    from_run = args.resume and args.config is None
    drop = ("distribute",) if from_run else ()
    return load_config(base, overrides_from(args), drop=drop, saved=from_run)


def run(args: argparse.Namespace) -> int:
    from segbalance.config import config_to_yaml

    cfg = build_config(args)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    if cfg.data.manifest is None:
        raise UserError("give the MANIFEST to train on (from 'segbalance prepare')")
    import tensorflow as tf

    from segbalance.train import train

    try:
        result = train(cfg, args.work_dir, resume=args.resume, overwrite=args.overwrite)
    except tf.errors.UnavailableError as err:  # a peer died: say what to do, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(
            f"segbalance train: a worker stopped or became unreachable ({first}). "
            f"Restart every worker with --resume --work-dir {args.work_dir}",
            file=sys.stderr,
        )
        return 1
    done = result.best_model is not None and result.best_score is not None
    if done and not result.already_complete:
        split = result.metrics.get("selection_split")
        on = f" on the {split} split" if split else ""
        print(
            f"best {result.monitor}{on} {result.best_score:.4f} at epoch {result.best_epoch}: "
            f"{result.best_model}"
        )
    return 0
