"""What a run returns (:class:`TrainResult`) and the run facts written to ``metrics.json``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segbalance.artifacts import ModelMeta
from segbalance.classes import ClassSet
from segbalance.config import Config
from segbalance.train import logs as runlog
from segbalance.train.workdir import WorkDir
from segbalance.version import __version__


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or already complete) run produced.

    Attributes:
        work_dir: the run's folder.
        best_model: path of ``best.keras`` (None if no epoch was validated).
        best_epoch: epoch (from 1) of the best monitored value.
        best_score: that value.
        monitor: the monitored quantity.
        epochs_completed: epochs in the history.
        history: the history rows.
        metrics: the content of ``metrics.json``.
        already_complete: True when ``resume`` found a finished run and trained nothing.
    """

    work_dir: Path
    best_model: Path | None
    best_epoch: int | None
    best_score: float | None
    monitor: str
    epochs_completed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    already_complete: bool = False


def run_summary(
    cfg: Config,
    wd: WorkDir,
    rows: list[dict[str, Any]],
    groups: list[str],
    *,
    stopped_early: bool,
    facts: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``metrics.json``: best and last epoch, per group, and run facts.

    Args:
        stopped_early: early stopping ended the run.
        facts: what the trainer knows of the run (precision, replicas, plan, ...); a
            multiclass run's ``classes`` (names) adds per-class IoU to each epoch view;
            ``selection_split``, the split that picked the best epoch (absent: valid).
    """
    # Epoch 1 includes tracing the steps: the steady speed is that of later epochs.
    speeds = [float(r["images_per_s"]) for r in rows if runlog.is_finite(r["images_per_s"])]
    speeds = speeds[1:] or speeds
    return runlog.metrics_summary(
        rows,
        groups,
        cfg.train.monitor,
        epochs=cfg.train.epochs,
        stopped_early=stopped_early,
        extra={
            **facts,
            "train_images_per_s": float(np.median(speeds)) if speeds else None,
            "best_model": wd.best.name if wd.best.is_file() else None,
        },
        classes=facts.get("classes"),
        selection=facts.get("selection_split"),
    )


def complete_result(wd: WorkDir, cfg: Config, chief: bool) -> TrainResult:
    """A finished run found by ``resume``: nothing is trained."""
    metrics = json.loads(wd.metrics.read_text())
    rows = runlog.read_history(wd.history)
    if chief:
        print(
            f"run in {wd.root} is complete ({len(rows)} epoch(s), best "
            f"{metrics['monitor']} {metrics['best_score']} at epoch {metrics['best_epoch']}); "
            "nothing to train",
            flush=True,
        )
    return result_from(wd, cfg, rows, metrics, already_complete=True)


def result_from(
    wd: WorkDir,
    cfg: Config,
    rows: list[dict[str, Any]],
    metrics: dict[str, Any],
    already_complete: bool = False,
) -> TrainResult:
    """Build a :class:`TrainResult` from the history and metrics of a run."""
    score = metrics.get("best_score")
    return TrainResult(
        work_dir=wd.root,
        best_model=wd.best if wd.best.is_file() else None,
        best_epoch=metrics.get("best_epoch"),
        best_score=None if score is None or not math.isfinite(score) else float(score),
        monitor=cfg.train.monitor,
        epochs_completed=len(rows),
        history=rows,
        metrics=metrics,
        already_complete=already_complete,
    )


def model_meta(
    cfg: Config,
    groups: list[str],
    epoch: int,
    score: float,
    policy: str,
    classes: ClassSet | None = None,
) -> ModelMeta:
    """What ``best.keras`` carries for evaluate, predict and export (nanoGPT-style).

    ``classes``: a multiclass run's classes (names, values, colours, ignore), so the model
    file alone says what its K channels mean.
    """
    return ModelMeta(
        image_size=(int(cfg.data.image_size[0]), int(cfg.data.image_size[1])),
        groups=list(groups),
        threshold=cfg.train.threshold,
        preprocessing="0-255",
        output="logits",
        config=cfg.model_dump(mode="json"),
        classes=None if classes is None else classes.to_json(),
        extra={
            "epoch": epoch,
            "monitor": cfg.train.monitor,
            "score": score,
            "precision": policy,
            "segbalance_version": __version__,
        },
    )
