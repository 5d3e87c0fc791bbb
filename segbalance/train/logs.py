"""What a run reports: history.csv, TensorBoard, metrics.json and the console.

Only the chief writes files; the other workers get a :class:`RunLog` with ``chief=False``
whose methods write nothing but keep the rows (so the loop has no ``if chief`` around calls).

``history.csv`` has one row per finished epoch. A resumed run first drops rows of epochs
it will run again (a kill between the row and the checkpoint), so every epoch appears
exactly once. ``epoch`` counts from 1. Columns: ``epoch, loss, iou, val_loss, val_iou,
val_dice, mean_group_iou, worst_group_iou, worst_group, lr, seconds, images_per_s`` then
``iou_<g>`` and ``dice_<g>`` for every group; an adaptive run (``balance: adaptive``) adds
``weight_<g>`` (the mix p_e the epoch sampled from) and ``val_loss_<g>`` (each group's mean
validation loss), and TensorBoard ``group_weight/<g>`` scalars. A multiclass run (the
manifest has classes) adds ``class_iou_<class>`` for every class after the group columns
(NaN when the class is absent from the validation set), and TensorBoard ``class_iou/<c>``
and ``group_class_iou/<g>/<c>`` scalars; its ``iou``, ``val_iou``, ``val_dice`` and the
group columns are means over the foreground classes (:mod:`segbalance.metrics`).
A run whose best epoch a selection split picks (``data.selection_split``) adds the
:data:`SELECT_COLUMNS` and ``select_iou_<g>`` last, and TensorBoard ``select/<column>``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from segbalance.io import write_text
from segbalance.metrics import summary_metrics
from segbalance.train.workdir import WorkDir

BASE_COLUMNS = (
    "epoch",
    "loss",
    "iou",
    "val_loss",
    "val_iou",
    "val_dice",
    "mean_group_iou",
    "worst_group_iou",
    "worst_group",
    "lr",
    "seconds",
    "images_per_s",
)
# monitor name -> (history column, better direction)
MONITORS = {
    "mean_group_iou": ("mean_group_iou", "max"),
    "worst_group_iou": ("worst_group_iou", "max"),
    "val_loss": ("val_loss", "min"),
    "iou": ("val_iou", "max"),
}

# A validation column -> the same value on the selection split (data.selection_split), in a
# run whose best epoch that split picks; per group: select_iou_<g>.
SELECT_COLUMNS = {
    "val_loss": "select_loss",
    "val_iou": "select_iou",
    "val_dice": "select_dice",
    "mean_group_iou": "select_mean_group_iou",
    "worst_group_iou": "select_worst_group_iou",
    "worst_group": "select_worst_group",
}


def monitor_column(monitor: str, selection: bool = False) -> tuple[str, str]:
    """(history column, better direction) of ``train.monitor``; with ``selection`` the
    column of the selection split (:data:`SELECT_COLUMNS`)."""
    column, mode = MONITORS[monitor]
    return (SELECT_COLUMNS[column] if selection else column), mode


def history_columns(
    groups: Sequence[str],
    adaptive: bool = False,
    classes: Sequence[str] | None = None,
    selection: bool = False,
) -> list[str]:
    """Every column of history.csv for these groups (``adaptive``: weights, group losses;
    ``classes``: per-class validation IoU; ``selection``: the selection split's columns)."""
    columns = [*BASE_COLUMNS, *(f"iou_{g}" for g in groups), *(f"dice_{g}" for g in groups)]
    columns += [f"class_iou_{c}" for c in classes or ()]
    if adaptive:
        columns += [*(f"weight_{g}" for g in groups), *(f"val_loss_{g}" for g in groups)]
    if selection:
        columns += [*SELECT_COLUMNS.values(), *(f"select_iou_{g}" for g in groups)]
    return columns


def selection_columns(val: Mapping[str, Any]) -> dict[str, Any]:
    """The history columns of a validation pass over the selection split
    (:func:`segbalance.train.steps.validate` output)."""
    row = {new: val[old] for old, new in SELECT_COLUMNS.items()}
    for g, entry in val["groups"].items():
        row[f"select_iou_{g}"] = float("nan") if entry["iou"] is None else entry["iou"]
    return row


def _parse(value: str) -> Any:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def read_history(path: Path) -> list[dict[str, Any]]:
    """Rows of a history.csv (numbers parsed); [] when there is none."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def history_text(
    rows: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    adaptive: bool = False,
    classes: Sequence[str] | None = None,
    selection: bool = False,
) -> str:
    """The CSV text of the rows, columns in :func:`history_columns` order."""
    buf = io.StringIO()
    columns = history_columns(groups, adaptive, classes, selection)
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return buf.getvalue()


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class RunLog:
    """History, TensorBoard and console output of one run.

    Args:
        wd: the work dir (history.csv and logs/ in it).
        groups: group names (per-group columns and TensorBoard tags).
        chief: write files and print (False on other workers).
        done_epochs: epochs the restored checkpoint has finished; later rows are dropped.
        adaptive: the run adapts its group weights (more columns and scalars).
        classes: the class names of a multiclass run (per-class columns and scalars).
        selection: a selection split picks the best epoch (its columns and scalars).
    """

    def __init__(
        self,
        wd: WorkDir,
        groups: Sequence[str],
        *,
        chief: bool,
        done_epochs: int = 0,
        adaptive: bool = False,
        classes: Sequence[str] | None = None,
        selection: bool = False,
    ) -> None:
        self.wd, self.groups, self.chief, self.adaptive = wd, list(groups), chief, adaptive
        self.selection = selection
        self.classes = None if classes is None else list(classes)
        self.rows = [r for r in read_history(wd.history) if r["epoch"] <= done_epochs]
        self._writer: Any = None
        if chief:
            self._writer = tf.summary.create_file_writer(str(wd.logs))
            self._write_history()

    def _write_history(self) -> None:
        text = history_text(self.rows, self.groups, self.adaptive, self.classes, self.selection)
        write_text(self.wd.history, text)

    def epoch_end(
        self,
        row: dict[str, Any],
        mix: Mapping[str, int],
        group_classes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Append a history row, write it atomically, log scalars and the group mix.

        ``group_classes``: a multiclass run's validation ``groups`` (evaluate JSON shape:
        each with ``classes``), logged as ``group_class_iou/<g>/<c>``.
        """
        self.rows.append(row)  # every worker keeps the rows: its result reports them
        if not self.chief:
            return
        self._write_history()
        total = max(sum(mix.values()), 1)
        scalars = {f"epoch/{k}": row[k] for k in ("loss", "iou", "val_loss", "val_iou")}
        scalars.update({"epoch/val_dice": row["val_dice"], "epoch/lr": row["lr"]})
        scalars["epoch/images_per_s"] = row["images_per_s"]
        scalars["groups/mean_group_iou"] = row["mean_group_iou"]
        scalars["groups/worst_group_iou"] = row["worst_group_iou"]
        for g in self.groups:
            scalars[f"group_iou/{g}"] = row.get(f"iou_{g}")
            scalars[f"group_mix/{g}"] = mix.get(g, 0) / total
            if self.adaptive:
                scalars[f"group_weight/{g}"] = row.get(f"weight_{g}")
                scalars[f"group_val_loss/{g}"] = row.get(f"val_loss_{g}")
        scalars.update(class_scalars(row, self.classes or (), group_classes or {}))
        if self.selection:
            scalars.update({f"select/{k}": row.get(k) for k in SELECT_COLUMNS.values()})
        write_scalars(self._writer, int(row["epoch"]), scalars)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def class_scalars(
    row: Mapping[str, Any], classes: Sequence[str], groups: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """TensorBoard tags of a multiclass epoch: IoU per class, and per group and class."""
    out: dict[str, Any] = {f"class_iou/{c}": row.get(f"class_iou_{c}") for c in classes}
    for g, entry in groups.items():
        for c, metrics in (entry.get("classes") or {}).items():
            out[f"group_class_iou/{g}/{c}"] = metrics.get("iou")
    return out


def write_scalars(writer: Any, step: int, scalars: Mapping[str, Any]) -> None:
    """TensorBoard scalars through ``tf.summary.write`` (tensorflow-cpu ships no
    tensorboard package, which ``tf.summary.scalar`` needs); non-finite values are skipped.
    """
    meta = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
    meta.plugin_data.plugin_name = "scalars"
    with writer.as_default(step=step):
        for tag, value in scalars.items():
            if is_finite(value):
                tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=meta)
    writer.flush()


def is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def best_row(
    rows: Sequence[Mapping[str, Any]], monitor: str, selection: bool = False
) -> Mapping[str, Any] | None:
    """The row with the best monitored value (earliest on ties); ``selection``: the
    value on the selection split."""
    column, mode = monitor_column(monitor, selection)
    scored = [r for r in rows if is_finite(r.get(column))]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda r: (sign * float(r[column]), -int(r["epoch"])))


def group_table(row: Mapping[str, Any], groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-group IoU/Dice of a history row."""
    return {g: {"iou": row.get(f"iou_{g}"), "dice": row.get(f"dice_{g}")} for g in groups}


def metrics_summary(
    rows: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    monitor: str,
    *,
    epochs: int,
    stopped_early: bool,
    extra: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    selection: str | None = None,
) -> dict[str, Any]:
    """The content of metrics.json: best and last epoch, per group, and run facts.

    ``classes`` (multiclass): each epoch view adds ``classes: {<c>: {"iou"}}``.
    ``selection``: the split that picked the best epoch (None: the valid split); the
    epoch views add its columns.
    """
    picked = selection is not None
    best = best_row(rows, monitor, picked)
    last = rows[-1] if rows else None

    def epoch_view(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        view = {k: row.get(k) for k in BASE_COLUMNS}
        view["groups"] = group_table(row, groups)
        if classes is not None:
            view["classes"] = {c: {"iou": row.get(f"class_iou_{c}")} for c in classes}
        if picked:
            view["selection"] = {k: row.get(k) for k in SELECT_COLUMNS.values()}
        return view

    return {
        "monitor": monitor,
        "best_epoch": None if best is None else int(best["epoch"]),
        "best_score": None if best is None else best[monitor_column(monitor, picked)[0]],
        "epochs_planned": epochs,
        "epochs_completed": len(rows),
        "stopped_early": stopped_early,
        "groups": list(groups),
        "best": epoch_view(best),
        "last": epoch_view(last),
        **dict(extra or {}),
    }


def write_metrics(path: Path, summary: Mapping[str, Any]) -> None:
    """Write metrics.json atomically (NaN becomes null: strict JSON)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    write_text(path, json.dumps(clean(dict(summary)), indent=2) + "\n")


def class_parts(row: Mapping[str, Any]) -> list[str]:
    """``iou nail 0.41 skin -`` of a multiclass row (its ``class_iou_<c>``; ``-``: absent);
    [] for binary."""
    found = [(k[len("class_iou_") :], v) for k, v in row.items() if k.startswith("class_iou_")]
    shown = [f"{c} {v:.4f}" if is_finite(v) else f"{c} -" for c, v in found]
    return [f"iou {' '.join(shown)}"] if found else []


def select_parts(row: Mapping[str, Any]) -> list[str]:
    """``select mean 0.61 worst 0.42 (g4)`` of a row with selection columns; else []."""
    if "select_mean_group_iou" not in row:
        return []
    mean, worst = row["select_mean_group_iou"], row["select_worst_group_iou"]
    return [f"select mean {mean:.4f} worst {worst:.4f} ({row['select_worst_group']})"]


def summary_line(row: Mapping[str, Any], epochs: int, monitor: str, improved: bool) -> str:
    """One line per epoch, e.g. ``epoch 2/10 loss 0.41 ... worst 0.52 (g4) best``."""
    width = len(str(epochs))
    parts = [
        f"epoch {int(row['epoch']):>{width}}/{epochs}",
        f"loss {row['loss']:.4f}",
        f"val_loss {row['val_loss']:.4f}",
        f"val_iou {row['val_iou']:.4f}",
        f"mean_group_iou {row['mean_group_iou']:.4f}",
        f"worst_group_iou {row['worst_group_iou']:.4f} ({row['worst_group']})",
        *class_parts(row),
        *select_parts(row),
        f"lr {row['lr']:.2e}",
        f"{row['seconds']:.1f}s",
        f"{row['images_per_s']:.1f} img/s",
    ]
    if improved:
        parts.append(f"* best {'select ' if 'select_loss' in row else ''}{monitor}")
    return "  ".join(parts)


def train_iou(counts: Any) -> float:
    """IoU of summed train counts: [4] binary, [K, 4] mean over the foreground classes."""
    counts = np.asarray(counts, np.float64)
    return float(summary_metrics(counts, multiclass=counts.ndim == 2)["iou"])


def history_row(
    epoch: int,
    loss: float,
    counts: np.ndarray,
    seconds: float,
    seen: int,
    val: Mapping[str, Any],
    lr: float,
) -> dict[str, Any]:
    """The history row of epoch ``epoch`` (from 0): train loss/IoU, validation, speed.

    ``counts``: the epoch's train counts, [4] or (multiclass) [K, 4].
    """
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "loss": loss,
        "iou": train_iou(counts),
        **{k: v for k, v in val.items() if k not in ("groups", "group_loss", "classes")},
        "lr": lr,
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else float("nan"),
    }
    nan = float("nan")
    for g, entry in val["groups"].items():
        row[f"iou_{g}"] = nan if entry["iou"] is None else entry["iou"]
        row[f"dice_{g}"] = nan if entry["dice"] is None else entry["dice"]
    return row
