"""The one training loop: ``train(cfg, work_dir)`` on any ``tf.distribute`` strategy.

Per epoch ``e`` the sampling plan gives the row order; each worker reads its share of every
global batch (``SamplingPlan.shard``) through ``distribute_datasets_from_function``; a
compiled ``strategy.run`` step takes the gradient with ``tf.GradientTape`` (``model.fit``
fails under MultiWorkerMirroredStrategy in Keras 3). After each epoch: validation per
group, ``best.keras`` when the monitored value improved, a history row, a checkpoint.

A run killed at any point resumes (``resume=True``) at its last checkpoint: the same plan
from the same epoch and step, so the finished run equals an uninterrupted one.

Example:
    >>> cfg = load_config(None, {"data.manifest": "data/manifest.csv", "train.epochs": 2})
    >>> result = train(cfg, "runs/first")  # doctest: +SKIP
    >>> result.best_score, result.best_model  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segbalance.config import Config
from segbalance.data.manifest import Manifest, read_manifest
from segbalance.errors import UserError
from segbalance.train import logs as runlog
from segbalance.train.state import WorkDir, prepare_work_dir


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


def load_data(cfg: Config) -> tuple[Manifest, Manifest]:
    """The train and valid rows of the manifest, limited to ``data.groups``.

    Raises:
        UserError: no manifest, unknown groups, an empty train or valid split.
    """
    if not cfg.data.manifest:
        raise UserError("no manifest: pass MANIFEST (from 'segbalance prepare') or data.manifest")
    manifest = read_manifest(cfg.data.manifest)
    if cfg.data.groups:
        manifest = manifest.select(groups=cfg.data.groups)
        keep = tuple(g for g in manifest.groups if g in set(map(str, cfg.data.groups)))
        manifest = dataclasses.replace(manifest, group_order=keep)
    train = manifest.select(split=cfg.data.train_split)
    valid = manifest.select(split=cfg.data.valid_split)
    for name, part in ((cfg.data.train_split, train), (cfg.data.valid_split, valid)):
        if len(part) == 0:
            raise UserError(
                f"manifest {cfg.data.manifest} has no '{name}' rows; run 'segbalance prepare' "
                "with a validation fraction, or set data.train_split/data.valid_split"
            )
    return train, valid


def check_config(cfg: Config) -> None:
    """Values the config types allow but training cannot use.

    Raises:
        UserError: naming the key.
    """
    from segbalance.models import model_names

    for key, value in (
        ("train.epochs", cfg.train.epochs),
        ("train.batch_size", cfg.train.batch_size),
        ("train.keep_checkpoints", cfg.train.keep_checkpoints),
    ):
        if value < 1:
            raise UserError(f"{key}={value} must be at least 1")
    if cfg.train.validation_batch_size is not None and cfg.train.validation_batch_size < 1:
        raise UserError("train.validation_batch_size must be at least 1 (or null: batch_size)")
    if cfg.train.checkpoint_every_steps is not None and cfg.train.checkpoint_every_steps < 1:
        raise UserError("train.checkpoint_every_steps must be at least 1 (or null: per epoch)")
    if cfg.model.name not in model_names():
        from segbalance.errors import unknown_name_error

        raise unknown_name_error("model", cfg.model.name, model_names())


def loss_weights(cfg: Config, train: Manifest) -> tuple[str, np.ndarray | None]:
    """Balance by sampling, or (``sampling.sample_weights``) by per-sample loss weights.

    With sample weights the plan samples in natural proportions and every row of group g
    weighs ``target_g / natural_g``, so the expected loss is that of the balanced mix.

    Returns:
        (balance strategy for the plan, weight per train row or None).
    """
    if not cfg.sampling.sample_weights:
        return cfg.sampling.balance, None
    from segbalance.sampling import group_probabilities

    counts = train.counts()
    target = group_probabilities(counts, cfg.sampling.balance, cfg.sampling.weights)
    total = sum(counts.values())
    per_group = {g: target[g] / (n / total) if n else 0.0 for g, n in counts.items()}
    return "proportional", np.array([per_group[g] for g in train.group], np.float32)


def train(
    cfg: Config, work_dir: str | Path, *, resume: bool = False, overwrite: bool = False
) -> TrainResult:
    """Train the model of ``cfg`` and write the run into ``work_dir``.

    Args:
        cfg: the full config (``data.manifest`` set).
        work_dir: the run's folder (see :mod:`segbalance.train.state` for the rules).
        resume: continue the run in ``work_dir`` from its last checkpoint.
        overwrite: delete the run in ``work_dir`` first.

    Raises:
        UserError: bad config, data or work dir; a batch not divisible by the replicas.
    """
    check_config(cfg)
    if resume:  # config mismatches fail before any TensorFlow work starts
        prepare_work_dir(work_dir, cfg, resume=True, overwrite=overwrite, chief=False)
    data = load_data(cfg)  # bad data fails before the work dir is touched
    from segbalance.train import distribute as api

    strategy = api.make_strategy(cfg.distribute)
    chief = bool(api.is_chief(strategy))
    worker = api.worker_info(strategy)
    replicas = strategy.num_replicas_in_sync
    batch = cfg.train.batch_size
    valid_batch = cfg.train.validation_batch_size or batch
    for what, value in (("train.batch_size", batch), ("train.validation_batch_size", valid_batch)):
        if value % replicas:
            raise UserError(
                f"{what}={value} is not divisible by the {replicas} replicas; use a multiple "
                f"of {replicas} (each replica gets an equal share of the global batch)"
            )
    wd = prepare_work_dir(work_dir, cfg, resume=resume, overwrite=overwrite, chief=chief)
    if resume and wd.metrics.is_file():
        return _complete_result(wd, cfg, chief)
    import keras

    from segbalance.train.session import Session

    policy = keras.mixed_precision.global_policy()
    try:  # the run sets the global dtype policy; callers get theirs back
        session = Session(cfg, wd, strategy, api, data, chief=chief, worker=worker)
        return session.run(resume=resume)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _complete_result(wd: WorkDir, cfg: Config, chief: bool) -> TrainResult:
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


def timer() -> float:
    """Monotonic seconds (one place to stub in tests)."""
    return time.perf_counter()
