"""The rows and the sampling plan of a run: one builder for ``train`` and ``plan``.

``segbalance plan`` promises "exactly what ``segbalance train`` will sample", so both call
:func:`training_rows` and :func:`training_plan`: the same group selection (``data.groups``
trims the group list, so a left-out group is not an empty group of the plan) and the same
switch to natural proportions when ``sampling.sample_weights`` balances by loss weights.
For a multiclass manifest :func:`class_report` adds what the plan does to each class.

Example:
    >>> train_rows = training_rows(cfg, read_manifest(cfg.data.manifest))  # doctest: +SKIP
    >>> plan, weights = training_plan(cfg, train_rows)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from segbalance.config import Config
from segbalance.data.folds import fold_rows
from segbalance.data.manifest import Manifest, read_manifest
from segbalance.data.splits import SELECT
from segbalance.errors import UserError
from segbalance.pipeline.verify import check_files
from segbalance.sampling import SamplingPlan, group_probabilities, training_epoch_length
from segbalance.train.task import resolve_task


def select_groups(cfg: Config, manifest: Manifest) -> Manifest:
    """The rows of ``data.groups`` (all when unset); the group list holds only those."""
    if not cfg.data.groups:
        return manifest
    wanted = set(cfg.data.groups)
    kept = manifest.select(groups=cfg.data.groups)
    order = tuple(g for g in kept.groups if g in wanted)
    return dataclasses.replace(kept, group_order=order)


def split_rows(cfg: Config, manifest: Manifest) -> tuple[Manifest, Manifest]:
    """(train, valid) of the selected groups: the splits, or ``data.fold``'s folds.

    Raises:
        UserError: ``data.fold`` set on a manifest without folds or outside 0..K-1.
    """
    rows = select_groups(cfg, manifest)
    if cfg.data.fold is not None:  # the test split is in no fold: it stays untouched
        where = f"manifest {cfg.data.manifest}" if cfg.data.manifest else "the manifest"
        return fold_rows(rows, cfg.data.fold, where)
    return rows.select(split=cfg.data.train_split), rows.select(split=cfg.data.valid_split)


def training_rows(cfg: Config, manifest: Manifest) -> Manifest:
    """The rows a run trains on: split ``data.train_split`` (or the folds other than
    ``data.fold``) of the selected groups."""
    return split_rows(cfg, manifest)[0]


def selection_rows(cfg: Config, manifest: Manifest) -> Manifest | None:
    """The rows that pick the best epoch (``data.selection_split``) of the selected groups;
    None when the valid rows pick it.

    ``auto`` takes the ``select`` split where the manifest has one (``prepare
    --selection-fraction``); a named split must have rows.

    Raises:
        UserError: a named split with no rows, or the train split named.
    """
    name = cfg.data.selection_split
    if name is None or name in ("none", cfg.data.valid_split):
        return None
    where = f"manifest {cfg.data.manifest}" if cfg.data.manifest else "the manifest"
    if name == cfg.data.train_split:
        raise UserError(
            f"data.selection_split '{name}' is the train split: the epoch would be chosen on "
            "the images it trained on; use 'auto' or a held-out split"
        )
    if name == "auto" and cfg.data.valid_split == SELECT:  # the select rows validate already
        return None
    rows = select_groups(cfg, manifest).select(split=SELECT if name == "auto" else name)
    if len(rows) == 0 and name != "auto":
        raise UserError(
            f"data.selection_split '{name}': {where} has no '{name}' rows; run 'segbalance "
            "prepare' with --selection-fraction, or set data.selection_split: auto"
        )
    return rows if len(rows) else None


def load_run_data(cfg: Config) -> tuple[Manifest, Manifest, Manifest | None]:
    """The train and valid rows of ``data.manifest``, limited to ``data.groups``
    (``data.fold`` k: the other folds and fold k instead of the splits), and the rows that
    pick the best epoch (:func:`selection_rows`; None: the valid rows do).

    Raises:
        UserError: no manifest, unknown groups, an empty train or valid split, a file
            missing, damaged or resized since prepare; a bad ``data.selection_split``.
    """
    if not cfg.data.manifest:
        raise UserError("no manifest: pass MANIFEST (from 'segbalance prepare') or data.manifest")
    manifest = read_manifest(cfg.data.manifest)
    train, valid = split_rows(cfg, manifest)
    select = selection_rows(cfg, manifest)
    names = (cfg.data.train_split, cfg.data.valid_split)
    if cfg.data.fold is not None:
        names = (f"folds other than {cfg.data.fold}", f"fold {cfg.data.fold}")
    for name, part in zip(names, (train, valid), strict=True):
        if len(part) == 0:
            raise UserError(
                f"manifest {cfg.data.manifest} has no '{name}' rows; run 'segbalance prepare' "
                "with a validation fraction, or set data.train_split/data.valid_split"
            )
        # Headers only: a file moved or damaged since prepare fails now, not mid-epoch.
        check_files(part, f"manifest {cfg.data.manifest}")
    if select is not None:
        check_files(select, f"manifest {cfg.data.manifest}")
    return train, valid, select


def load_data(cfg: Config) -> tuple[Manifest, Manifest]:
    """The train and valid rows of :func:`load_run_data`."""
    train, valid, _ = load_run_data(cfg)
    return train, valid


def loss_weights(cfg: Config, train: Manifest) -> tuple[str, np.ndarray | None]:
    """Balance by sampling, or (``sampling.sample_weights``) by per-sample loss weights.

    With sample weights the plan samples in natural proportions and every row of group g
    weighs ``target_g / natural_g``, so the expected loss is that of the balanced mix.

    Returns:
        (balance strategy for the plan, weight per train row or None).
    """
    if not cfg.sampling.sample_weights:
        return cfg.sampling.balance, None
    counts = train.counts()
    target = group_probabilities(counts, cfg.sampling.balance, cfg.sampling.weights)
    total = sum(counts.values())
    per_group = {g: target[g] / (n / total) if n else 0.0 for g, n in counts.items()}
    return "proportional", np.array([per_group[g] for g in train.group], np.float32)


def training_plan(cfg: Config, train: Manifest) -> tuple[SamplingPlan, np.ndarray | None]:
    """The sampling plan of a run over its train rows, and the per-row loss weights.

    Every epoch is ``steps * train.batch_size`` samples (whole global batches), so every
    replica gets an equal share of every step.
    """
    balance, sample_weights = loss_weights(cfg, train)
    length = training_epoch_length(len(train), cfg.data.epoch_length, cfg.train.batch_size)
    plan = SamplingPlan(
        train.group_ids,
        train.groups,
        balance=balance,
        # Custom weights shape the target mix, which sample weights then carry instead.
        weights=None if sample_weights is not None else cfg.sampling.weights,
        mode=cfg.sampling.mode,
        seed=cfg.train.seed,
        epoch_length=length,
    )
    return plan, sample_weights


def class_report(cfg: Config, train: Manifest, plan: SamplingPlan) -> dict[str, Any] | None:
    """Per class of a multiclass manifest, what ``plan`` trains on; None for binary.

    Per class: train ``images`` that contain it (and ``images_by_group``), its mean
    ``pixel_share`` over the train images, the loss ``weight`` train will use
    (``loss.class_weights``; None: all 1) and ``samples_per_epoch``, the expected number of
    samples per epoch that contain it (each group's expected samples times the share of its
    images that contain the class): how much balancing lifts a rare class.

    Raises:
        UserError: what ``train`` refuses for these classes (model.classes, class weights).
    """
    spec, cover = train.classes, train.class_coverage
    if spec is None or cover is None:
        return None
    task = resolve_task(cfg, train)
    contains = np.asarray(cover) > 0  # [N, K]
    ids = train.group_ids
    sizes = np.bincount(ids, minlength=len(train.groups))
    expected = np.array([plan.target.get(g, 0.0) * plan.epoch_length for g in train.groups])
    out: dict[str, Any] = {}
    for k, name in enumerate(spec.names):
        by_group = np.bincount(ids[contains[:, k]], minlength=len(train.groups))
        share = np.divide(by_group, sizes, out=np.zeros(len(sizes)), where=sizes > 0)
        out[name] = {
            "images": int(contains[:, k].sum()),
            "images_by_group": dict(zip(train.groups, by_group.tolist(), strict=True)),
            "pixel_share": float(np.mean(cover[:, k])) if len(cover) else 0.0,
            "weight": None if task.class_weights is None else task.class_weights[k],
            "samples_per_epoch": float((expected * share).sum()),
        }
    return {"weights": task.weights_source, "classes": out}
