"""The whole story on built-in synthetic data: what group balancing does, measured.

``run_demo`` writes, under its work dir::

    data/                 synthetic training set (tutorial layout, 749/144/126/52/34 x scale)
    data/segbalance/      its manifest (train/valid split, seeded)
    stats.png, stats.json per-group statistics of the training set
    heldout/              a separate synthetic set (another seed, the same group looks) with
                          the same number of images in every group, so the small groups are
                          measured as precisely as the big one
    runs/proportional/    training without balancing (groups seen as often as they occur)
    runs/uniform/         training with every group equally likely (the tutorial's recipe)
    comparison.png        held-out IoU per group of both runs, the training mix, and the
                          validation curves (mean and worst group IoU per epoch)
    demo.json             settings, wall times, held-out metrics of both runs

Both runs get the same budget: same model (unet-small from scratch), seed, epochs, batch
size and epoch length (the number of training images), so only the sampling differs.
Whatever the held-out numbers are, they are printed as measured.

Example:
    >>> summary = run_demo(Path("runs/demo"), quick=True)  # doctest: +SKIP
    >>> summary["heldout"]["uniform"]["worst_group_iou"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segbalance.config import load_config
from segbalance.data.prepare import prepare_dataset
from segbalance.data.stats import compute_stats, format_stats_table, plot_stats
from segbalance.data.synth import CLASSES_NAME, CLASSES_YAML, STYLES, generate, png_bytes, render
from segbalance.errors import UserError
from segbalance.evaluate import evaluate, json_view, write_json
from segbalance.io import atomic_path, write_text
from segbalance.sampling import group_probabilities
from segbalance.train import train

BALANCES = ("proportional", "uniform")
MARKER = "demo.json"


@dataclass(frozen=True)
class DemoSettings:
    """The knobs of a demo run (the defaults are the full demo)."""

    scale: float = 0.4  # training set: tutorial counts x scale
    image_size: int = 64  # synthetic images are drawn at this size, the model trains at it
    epochs: int = 14
    epoch_length: int = 480  # samples per epoch, the same for both runs
    batch_size: int = 16
    heldout_per_group: int = 40
    lr: float = 3e-3
    loss: str = "bce+dice"  # converges in fewer steps than dice+focal on 2 % foreground
    seed: int = 0
    heldout_seed: int = 1000
    # A narrow unet-small (widths 8..128): 4-5x faster than the default widths on a CPU.
    decoder_filters: tuple[int, ...] = (128, 64, 32, 16, 8)
    batch_norm: bool = True

    def overrides(self, manifest: Path, balance: str) -> dict[str, Any]:
        """The config keys of one training run."""
        return {
            "data.manifest": str(manifest),
            "data.image_size": self.image_size,
            "data.epoch_length": self.epoch_length,
            "data.cache_decoded": True,  # a few MiB at 64 px; decoding once saves CPU per epoch
            # At 64 px augmenting is cheap; XLA-compiling it costs more than it saves.
            "augment.jit": False,
            "loss.name": self.loss,
            "sampling.balance": balance,
            "model.name": "unet-small",
            "model.encoder_weights": "none",
            "model.decoder_filters": list(self.decoder_filters),
            "model.batch_norm": self.batch_norm,
            "optimizer.lr": self.lr,
            "train.epochs": self.epochs,
            "train.batch_size": self.batch_size,
            "train.seed": self.seed,
            "train.precision": "auto",
        }


FULL = DemoSettings()
QUICK = DemoSettings(scale=0.2, epochs=4, epoch_length=480, heldout_per_group=20)
TINY = DemoSettings(
    scale=0.02, image_size=32, epochs=1, epoch_length=8, batch_size=4, heldout_per_group=3
)


OUTPUTS = ("data", "heldout", "runs", "stats.png", "stats.json", "comparison.png")


def claim_work_dir(work_dir: Path, outputs: tuple[str, ...]) -> None:
    """Use ``work_dir`` only if it is empty or an earlier demo's (we replace what we wrote).

    Only the names in ``outputs`` are removed, and only in a folder holding demo.json.
    """
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir} is a file; choose a folder")
    if work_dir.is_dir() and any(work_dir.iterdir()) and not (work_dir / MARKER).is_file():
        raise UserError(
            f"--work-dir {work_dir} is not empty and holds no {MARKER} from an earlier demo; "
            "choose an empty or new folder"
        )
    for name in outputs:
        target = work_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)
    write_text(work_dir / MARKER, json.dumps({"status": "running"}) + "\n")


def write_heldout(
    out: Path, per_group: int, size: int, seed: int, classes: bool = False
) -> dict[str, int]:
    """A balanced synthetic set: ``per_group`` images of every group, drawn with ``seed``.

    ``classes``: the 3-class version (label masks, and its classes file in ``out``).
    """
    if classes:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / CLASSES_NAME, CLASSES_YAML)
    for group in STYLES:
        for kind in ("Images", "Masks"):
            (out / kind / group).mkdir(parents=True, exist_ok=True)
        for i in range(per_group):
            image, mask = render(group, i, size, seed, classes=classes)
            name = f"heldout_{group}_{i:04d}.png"
            (out / "Images" / group / name).write_bytes(png_bytes(image))
            (out / "Masks" / group / name).write_bytes(png_bytes(mask))
    return dict.fromkeys(STYLES, per_group)


class Clock:
    """Wall time per step, printed as it goes."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.steps: dict[str, float] = {}
        self._last = self.start

    def lap(self, key: str, message: str = "") -> None:
        now = time.perf_counter()
        self.steps[key] = round(now - self._last, 1)
        self._last = now
        print(f"[demo] {message or key}: {self.steps[key]:.1f} s", flush=True)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def _prepare_data(work_dir: Path, s: DemoSettings, clock: Clock) -> tuple[Any, Any]:
    """synth -> prepare -> stats for training, and the held-out set; returns both manifests."""
    data, heldout = work_dir / "data", work_dir / "heldout"
    counts = generate(data, scale=s.scale, size=s.image_size, seed=s.seed, progress=False)
    write_heldout(heldout, s.heldout_per_group, s.image_size, s.heldout_seed)
    clock.lap("synth", f"synth: {sum(counts.values())} training images {counts}, held-out set")
    train = prepare_dataset(data, seed=s.seed, progress=False).manifest
    test = prepare_dataset(heldout, seed=s.seed, progress=False).manifest
    clock.lap("prepare", "prepare: both sets checked, manifests written")
    stats = compute_stats(train)
    write_text(work_dir / "stats.json", json.dumps(stats, indent=2) + "\n")
    plot_stats(stats, work_dir / "stats.png")
    print(format_stats_table(stats))
    clock.lap("stats", "stats: stats.json, stats.png")
    return train, test


def _train_and_evaluate(
    work_dir: Path, s: DemoSettings, heldout_csv: Path, clock: Clock
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train both runs, then evaluate each best.keras on the held-out set."""
    manifest = work_dir / "data" / "segbalance" / "manifest.csv"
    runs: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for balance in BALANCES:
        print(f"\n[demo] training with balance={balance}", flush=True)
        cfg = load_config(None, s.overrides(manifest, balance))
        run = train(cfg, work_dir / "runs" / balance, overwrite=True)
        if run.best_model is None:
            raise RuntimeError(f"the {balance} run wrote no best.keras")
        clock.lap(f"train_{balance}", f"train {balance}: {run.epochs_completed} epochs")
        runs[balance] = run
        result = evaluate(run.best_model, heldout_csv, batch_size=max(8, s.batch_size))
        write_json(result, work_dir / "runs" / balance / "heldout.json")
        results[balance] = result
    clock.lap("evaluate", "evaluate both on the held-out set")
    return runs, results


def comparison_table(results: dict[str, dict[str, Any]], train_counts: dict[str, int]) -> str:
    """Per-group held-out IoU of both runs side by side, then the summary rows."""
    a, b = BALANCES
    head = f"{'group':<8}{'train imgs':>11}{'held-out':>10}{a + ' IoU':>18}{b + ' IoU':>14}"
    lines = [head, "-" * len(head)]
    for g, entry in results[a]["groups"].items():
        other = results[b]["groups"][g]
        diff = other["iou"] - entry["iou"]
        lines.append(
            f"{g:<8}{train_counts.get(g, 0):>11}{entry['images']:>10}"
            f"{entry['iou']:>18.3f}{other['iou']:>14.3f}   {diff:+.3f}"
        )
    lines.append("-" * len(head))
    for key in ("mean_group_iou", "worst_group_iou", "overall_iou"):
        va, vb = results[a][key], results[b][key]
        lines.append(f"{key:<29}{va:>18.3f}{vb:>14.3f}   {vb - va:+.3f}")
    return "\n".join(lines)


def run_demo(
    work_dir: str | Path, quick: bool = False, settings: DemoSettings | None = None
) -> dict[str, Any]:
    """synth -> prepare -> stats -> train proportional and uniform -> held-out evaluation.

    Args:
        work_dir: folder for everything (empty, new, or an earlier demo's).
        quick: the smaller settings (:data:`QUICK`: 3 minutes measured on a shared 2-core CPU).
        settings: explicit settings (tests use :data:`TINY`); overrides ``quick``.

    Returns:
        The content of ``demo.json``: settings, seconds per step, training counts, and per
        run the held-out evaluation and the best validation epoch.
    """
    s = settings or (QUICK if quick else FULL)
    work_dir = Path(work_dir)
    claim_work_dir(work_dir, OUTPUTS)
    clock = Clock()
    train_manifest, _ = _prepare_data(work_dir, s, clock)
    heldout_csv = work_dir / "heldout" / "segbalance" / "manifest.csv"
    runs, results = _train_and_evaluate(work_dir, s, heldout_csv, clock)
    train_counts = train_manifest.select(split="train").counts()
    histories = {b: runs[b].history for b in BALANCES}
    note = (
        f"same budget for both: unet-small at {s.image_size} px, {s.epochs} epochs x "
        f"{s.epoch_length} samples, batch {s.batch_size}, seed {s.seed}; held-out: "
        f"{s.heldout_per_group} new images per group"
    )
    plot_comparison(results, histories, train_counts, work_dir / "comparison.png", note)
    clock.lap("figure", "comparison.png")
    summary = {
        "settings": asdict(replace(s)),
        "seconds": {**clock.steps, "total": clock.total()},
        "train_images": train_counts,
        "heldout": {b: json_view(results[b]) for b in BALANCES},
        "best_epoch": {b: runs[b].best_epoch for b in BALANCES},
        "files": {
            "stats": str(work_dir / "stats.png"),
            "comparison": str(work_dir / "comparison.png"),
            "runs": {b: str(work_dir / "runs" / b) for b in BALANCES},
        },
    }
    summary["table"] = comparison_table(results, train_counts)
    write_text(work_dir / MARKER, json.dumps(summary, indent=2) + "\n")
    return summary


COLOURS = {"proportional": "#8C8C8C", "uniform": "#DD8452"}


def plot_comparison(
    results: dict[str, dict[str, Any]],
    histories: dict[str, list[dict[str, Any]]],
    train_counts: dict[str, int],
    path: Path,
    note: str = "",
) -> Path:
    """Three panels: training mix per group, held-out IoU per group, validation curves."""
    groups = list(results[BALANCES[0]]["groups"])
    x = np.arange(len(groups))
    width = 0.38
    # A bare Figure with the Agg canvas (as in data/stats.py): no pyplot state, no display,
    # and no global backend switch for whoever imports this module.
    fig = Figure(figsize=(16, 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.2, 1.2]})
    mix, bars, curves = axes
    for k, balance in enumerate(BALANCES):
        offset = (k - 0.5) * width
        share = group_probabilities(train_counts, balance)
        mix.bar(
            x + offset,
            [100 * share[g] for g in groups],
            width,
            label=balance,
            color=COLOURS[balance],
        )
        ious = [results[balance]["groups"][g]["iou"] for g in groups]
        drawn = bars.bar(x + offset, ious, width, label=balance, color=COLOURS[balance])
        bars.bar_label(drawn, fmt="%.2f", fontsize=8, padding=2)
        rows = histories[balance]
        epochs = [r["epoch"] for r in rows]
        for key, style in (("mean_group_iou", "-"), ("worst_group_iou", "--")):
            curves.plot(
                epochs,
                [r[key] for r in rows],
                style,
                marker="o",
                markersize=3,
                color=COLOURS[balance],
                label=f"{balance}: {key.split('_')[0]} group",
            )
    labels = [f"{g}\n{train_counts.get(g, 0)} imgs" for g in groups]
    mix.set(title="What training sees: share of samples per group", ylabel="% of samples")
    bars.set(title="Held-out IoU per group (equal images per group)", ylabel="IoU", ylim=(0, 1.08))
    for ax in (mix, bars):
        ax.set_xticks(x, labels)
        ax.set_xlabel("group (training images)")
        ax.legend(frameon=False, fontsize=9)
    curves.set(
        title="Validation split during training", xlabel="epoch", ylabel="IoU", ylim=(0, 1.02)
    )
    curves.legend(frameon=False, fontsize=8)
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.3)
    summary = ", ".join(
        f"{b}: mean {results[b]['mean_group_iou']:.3f} / worst {results[b]['worst_group_iou']:.3f}"
        for b in BALANCES
    )
    title = f"Group balancing on synthetic nails, held-out IoU ({summary})"
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=11)
    return save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> Path:
    """Lay out and write a demo figure atomically as PNG."""
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def verdict(summary: dict[str, Any]) -> str:
    """One honest sentence on what balancing did to the small groups, from the numbers."""
    prop, uni = (summary["heldout"][b] for b in BALANCES)
    counts = summary["train_images"]
    small = sorted(counts, key=lambda g: counts[g])[:2]
    gains = {g: uni["groups"][g]["iou"] - prop["groups"][g]["iou"] for g in small}
    worst = uni["worst_group_iou"] - prop["worst_group_iou"]
    big = max(counts, key=lambda g: counts[g])
    big_change = uni["groups"][big]["iou"] - prop["groups"][big]["iou"]
    parts = ", ".join(f"group {g} {d:+.3f}" for g, d in gains.items())
    word = "raised" if worst > 0 else "did not raise"
    return (
        f"uniform vs proportional on the held-out set: smallest groups {parts}; "
        f"worst-group IoU {worst:+.3f} ({word}); largest group {big} {big_change:+.3f}"
    )
