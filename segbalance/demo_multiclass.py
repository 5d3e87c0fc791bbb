"""The multiclass story on built-in data: groups drawn from a rare class, measured per class.

``run_multiclass_demo`` writes, under its work dir::

    data/                 the 3-class synthetic set (``synth --classes``: background, nail and
                          a rare ring, mostly in the small folders 3 and 4) and classes.yaml
    data/segbalance/      its manifest, grouped by rarest class (``prepare --classes
                          classes.yaml --group-by rarest-class``): ring / nail / none
    heldout/              a separate 3-class set (another seed), the same number of images
                          from every folder, grouped the same way
    runs/proportional/    training without balancing
    runs/uniform/         every rarest-class group equally likely, so ring images are seen
                          as often as the rest
    comparison.png        held-out IoU per class and per group of both runs, and the mix
    demo.json             settings, wall times, held-out metrics of both runs

Both runs get the same budget (model, seed, epochs, epoch length): only the sampling
differs. This is MMSegmentation's ClassBalancedDataset done with exact per-epoch quotas.
Whatever the numbers are, they are printed as measured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segbalance.classes import load_classes
from segbalance.config import load_config
from segbalance.data.prepare import prepare_dataset
from segbalance.data.synth import CLASSES_NAME, generate
from segbalance.demo import (
    BALANCES,
    COLOURS,
    MARKER,
    Clock,
    claim_work_dir,
    save_figure,
    write_heldout,
)
from segbalance.evaluate import evaluate, json_view, write_json
from segbalance.io import write_text
from segbalance.sampling import group_probabilities
from segbalance.train import train

OUTPUTS = ("data", "heldout", "runs", "comparison.png")


@dataclass(frozen=True)
class MulticlassSettings:
    """The knobs of the multiclass demo (the defaults are the full demo)."""

    scale: float = 0.4
    # At 64 px the ring of group 4 is 2-3 pixels; at 96 it is learnable in 14 epochs.
    image_size: int = 96
    epochs: int = 14
    epoch_length: int = 480
    batch_size: int = 16
    heldout_per_group: int = 40
    lr: float = 3e-3
    loss: str = "ce+dice"
    # The ring is ~1 % of a ring image's pixels: unweighted, both runs never predict it.
    class_weights: str | None = "auto"
    seed: int = 0
    heldout_seed: int = 1000
    decoder_filters: tuple[int, ...] = (128, 64, 32, 16, 8)

    def overrides(self, manifest: Path, balance: str) -> dict[str, Any]:
        """The config keys of one training run."""
        return {
            "data.manifest": str(manifest),
            "data.image_size": self.image_size,
            "data.epoch_length": self.epoch_length,
            "data.cache_decoded": True,
            "augment.jit": False,
            "loss.name": self.loss,
            "loss.class_weights": self.class_weights,
            "sampling.balance": balance,
            "model.name": "unet-small",
            "model.encoder_weights": "none",
            "model.decoder_filters": list(self.decoder_filters),
            "optimizer.lr": self.lr,
            "train.epochs": self.epochs,
            "train.batch_size": self.batch_size,
            "train.seed": self.seed,
            "train.precision": "auto",
        }


FULL = MulticlassSettings()
QUICK = MulticlassSettings(scale=0.2, epochs=4, heldout_per_group=20)
TINY = MulticlassSettings(
    scale=0.04, image_size=32, epochs=1, epoch_length=8, batch_size=4, heldout_per_group=3
)


def _prepare(work_dir: Path, s: MulticlassSettings, clock: Clock) -> tuple[Any, Path, Path]:
    """synth --classes and prepare --group-by rarest-class, for training and held-out."""
    data, heldout = work_dir / "data", work_dir / "heldout"
    counts = generate(
        data, scale=s.scale, size=s.image_size, seed=s.seed, progress=False, classes=True
    )
    write_heldout(heldout, s.heldout_per_group, s.image_size, s.heldout_seed, classes=True)
    clock.lap("synth", f"synth --classes: {sum(counts.values())} training images, held-out set")
    spec = load_classes(data / CLASSES_NAME)
    kwargs: dict[str, Any] = {"seed": s.seed, "progress": False, "classes": spec}
    train_set = prepare_dataset(data, group_by="rarest-class", **kwargs).manifest
    prepare_dataset(heldout, group_by="rarest-class", **kwargs)
    clock.lap("prepare", "prepare --classes --group-by rarest-class: both sets")
    csv = Path("segbalance") / "manifest.csv"
    return train_set, data / csv, heldout / csv


def comparison_table(results: dict[str, dict[str, Any]], train_counts: dict[str, int]) -> str:
    """Held-out IoU per group x class and per class, both runs side by side."""
    a, b = BALANCES
    head = f"{'group':<8}{'train':>7}{'held-out':>10}  {'class':<12}{a:>14}{b:>10}"
    lines = [head, "-" * (len(head) + 9)]

    def row(label: str, name: str, va: float | None, vb: float | None) -> None:
        def show(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        diff = "" if va is None or vb is None else f"   {vb - va:+.3f}"
        lines.append(f"{label:<25}  {name:<12}{show(va):>14}{show(vb):>10}{diff}")

    for g, entry in results[a]["groups"].items():
        other = results[b]["groups"][g]
        label = f"{g:<8}{train_counts.get(g, 0):>7}{entry['images']:>10}"
        for name, per in entry["classes"].items():
            row(label, name, per["iou"], other["classes"][name]["iou"])
            label = ""
        row("", "mean (fg)", entry["iou"], other["iou"])
    lines.append("-" * (len(head) + 9))
    for name, per in results[a]["classes"].items():
        row("all images", name, per["iou"], results[b]["classes"][name]["iou"])
    for key in ("mean_group_iou", "worst_group_iou", "overall_iou"):
        row(key, "", results[a][key], results[b][key])
    lines.append("iou of a group = mean over foreground classes (background excluded); '-': absent")
    return "\n".join(lines)


def run_multiclass_demo(
    work_dir: str | Path, quick: bool = False, settings: MulticlassSettings | None = None
) -> dict[str, Any]:
    """synth --classes -> prepare by rarest class -> train proportional and uniform -> held-out.

    Returns:
        The content of ``demo.json`` (settings, seconds, training counts, held-out results).
    """
    s = settings or (QUICK if quick else FULL)
    work_dir = Path(work_dir)
    claim_work_dir(work_dir, OUTPUTS)
    clock = Clock()
    train_set, manifest, heldout_csv = _prepare(work_dir, s, clock)
    train_counts = train_set.select(split="train").counts()
    runs, results = {}, {}
    for balance in BALANCES:
        print(f"\n[demo] training with balance={balance} over rarest-class groups", flush=True)
        run = train(load_config(None, s.overrides(manifest, balance)), work_dir / "runs" / balance)
        if run.best_model is None:
            raise RuntimeError(f"the {balance} run wrote no best.keras")
        clock.lap(f"train_{balance}", f"train {balance}: {run.epochs_completed} epochs")
        runs[balance] = run
        results[balance] = evaluate(run.best_model, heldout_csv, batch_size=max(8, s.batch_size))
        write_json(results[balance], work_dir / "runs" / balance / "heldout.json")
    clock.lap("evaluate", "evaluate both on the held-out set")
    note = (
        f"same budget: unet-small at {s.image_size} px, {s.epochs} epochs x {s.epoch_length} "
        f"samples, batch {s.batch_size}, seed {s.seed}, loss {s.loss}, class weights "
        f"{s.class_weights}"
    )
    plot_multiclass(results, train_counts, work_dir / "comparison.png", note)
    clock.lap("figure", "comparison.png")
    summary: dict[str, Any] = {
        "task": "multiclass",
        "settings": asdict(s),
        "seconds": {**clock.steps, "total": clock.total()},
        "train_images": train_counts,
        "heldout": {b: json_view(results[b]) for b in BALANCES},
        "best_epoch": {b: runs[b].best_epoch for b in BALANCES},
        "files": {
            "comparison": str(work_dir / "comparison.png"),
            "runs": {b: str(work_dir / "runs" / b) for b in BALANCES},
        },
    }
    summary["table"] = comparison_table(results, train_counts)
    write_text(work_dir / MARKER, json.dumps(summary, indent=2) + "\n")
    return summary


def plot_multiclass(
    results: dict[str, dict[str, Any]], train_counts: dict[str, int], path: Path, note: str
) -> Path:
    """Three panels: training mix per group, held-out IoU per class, per group."""
    fig = Figure(figsize=(16, 4.8))
    FigureCanvasAgg(fig)
    mix, per_class, per_group = fig.subplots(1, 3)
    groups = list(results[BALANCES[0]]["groups"])
    classes = list(results[BALANCES[0]]["classes"])[1:]
    width = 0.38
    for k, balance in enumerate(BALANCES):
        offset, colour = (k - 0.5) * width, COLOURS[balance]
        share = group_probabilities(train_counts, balance)
        x = np.arange(len(groups))
        mix.bar(x + offset, [100 * share[g] for g in groups], width, label=balance, color=colour)
        values = [results[balance]["classes"][c]["iou"] or 0.0 for c in classes]
        drawn = per_class.bar(
            np.arange(len(classes)) + offset, values, width, label=balance, color=colour
        )
        per_class.bar_label(drawn, fmt="%.2f", fontsize=8, padding=2)
        values = [results[balance]["groups"][g]["iou"] or 0.0 for g in groups]
        drawn = per_group.bar(x + offset, values, width, label=balance, color=colour)
        per_group.bar_label(drawn, fmt="%.2f", fontsize=8, padding=2)
    labels = [f"{g}\n{train_counts.get(g, 0)} imgs" for g in groups]
    mix.set(title="What training sees: share of samples per group", ylabel="% of samples")
    mix.set_xticks(np.arange(len(groups)), labels)
    per_class.set(title="Held-out IoU per class (all images)", ylabel="IoU", ylim=(0, 1.08))
    per_class.set_xticks(np.arange(len(classes)), classes)
    per_group.set(title="Held-out IoU per group (mean over fg classes)", ylim=(0, 1.08))
    per_group.set_xticks(np.arange(len(groups)), labels)
    for ax in (mix, per_class, per_group):
        ax.legend(frameon=False, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Groups from the rarest class, held-out IoU\n{note}", fontsize=11)
    return save_figure(fig, path)


def verdict(summary: dict[str, Any]) -> str:
    """One honest sentence on what balancing by rarest class did to each class."""
    prop, uni = (summary["heldout"][b] for b in BALANCES)
    parts = []
    for name, per in prop["classes"].items():
        a, b = per["iou"], uni["classes"][name]["iou"]
        if a is not None and b is not None:
            parts.append(f"{name} {a:.3f} -> {b:.3f} ({b - a:+.3f})")
    worst = uni["worst_group_iou"] - prop["worst_group_iou"]
    return (
        "uniform over rarest-class groups vs proportional, held-out IoU per class: "
        + "; ".join(parts)
        + f"; worst group {worst:+.3f}"
    )
