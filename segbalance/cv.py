"""Group-stratified K-fold cross-validation: one run per fold, per-group spread and pooled IoU.

``cross_validate(cfg, work_dir)`` trains fold k in ``<work_dir>/fold<k>`` with
``data.fold = k`` (validate on fold k, train on the other folds; the manifest's folds come
from ``prepare --folds K``, each group spread over the folds as evenly as its size allows).
Each fold's best model is evaluated on its own fold at the masks' original sizes, as
``segbalance evaluate`` does. Reported per group:

* mean +- std over the folds of the fold's IoU (std with ddof=1: the folds are a sample),
  so a small group's instability shows;
* the pooled out-of-fold IoU: every image predicted by the model that did not train on it,
  the confusion counts summed over all folds, with a bootstrap 95 % interval.

Runs are resumable as ``compare``'s: a finished fold (metrics.json) is reused, a killed one
resumed; every fold and folder is checked before the first run. Writes ``cv.json``.

Example:
    >>> summary = cross_validate(cfg, "runs/cv")  # doctest: +SKIP
    >>> summary["pooled"]["worst_group_iou"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from segbalance.artifacts import load_model
from segbalance.config import Config, config_from_dict
from segbalance.data.folds import FIX, fold_count
from segbalance.data.manifest import Manifest, read_manifest
from segbalance.errors import UserError
from segbalance.evaluate import add_intervals, predict_counts
from segbalance.io import (
    check_file_target,
    check_folder_target,
    check_replaceable_file,
    json_has_keys,
    write_text,
)
from segbalance.metrics import GroupMetrics
from segbalance.text import format_table
from segbalance.train.plan import load_data, select_groups
from segbalance.train.run import resumable, train_or_resume

RESULT = "cv.json"


def fold_configs(cfg: Config, folds: int | None = None) -> list[Config]:
    """One config per fold of ``data.manifest`` (``data.fold`` = 0..K-1).

    Args:
        cfg: the run config; ``data.fold`` is replaced.
        folds: the K the user expects; None: the manifest's.

    Raises:
        UserError: no manifest, a manifest without folds, or another K than ``folds``.
    """
    if not cfg.data.manifest:
        raise UserError("no manifest: pass MANIFEST (from 'segbalance prepare --folds K')")
    k = fold_count(read_manifest(cfg.data.manifest, check_files=False))
    if k == 0:
        raise UserError(f"manifest {cfg.data.manifest} has no folds; {FIX}")
    if folds is not None and folds != k:
        raise UserError(
            f"--folds {folds}: manifest {cfg.data.manifest} has {k} folds; pass --folds {k}, "
            f"or run 'segbalance prepare DATA_ROOT --folds {folds}' again"
        )
    out = []
    for fold in range(k):
        raw = cfg.model_dump(mode="json")
        raw["data"]["fold"] = fold
        try:
            out.append(config_from_dict(raw))
        except ValidationError as err:  # the config was valid: only data.fold changed
            raise UserError(f"fold {fold}: {err.errors()[0]['msg']}") from err
    return out


def fold_counts(cfg: Config, best_model: Path) -> tuple[Manifest, np.ndarray]:
    """The fold's validation rows and their confusion counts by its best model.

    Counts are [N, 4], or [N, K, 4] per class for a manifest with classes.
    """
    model, meta = load_model(best_model)
    valid = load_data(cfg)[1]
    size = (int(meta.image_size[0]), int(meta.image_size[1]))
    batch = cfg.train.validation_batch_size or cfg.train.batch_size
    return valid, predict_counts(model, valid, size, float(meta.threshold), batch)


def cross_validate(
    cfg: Config, work_dir: str | Path, *, folds: int | None = None, bootstrap: int = 1000
) -> dict[str, Any]:
    """Train every fold, evaluate each on its own fold, write cv.json.

    Returns:
        The content of cv.json: ``folds`` (per fold the group IoUs), ``groups`` (per group
        mean, std, per-fold values), ``pooled`` (out-of-fold evaluation with intervals),
        ``table``, ``runs``.
    """
    work_dir = Path(work_dir)
    configs = fold_configs(cfg, folds)
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir} is a file; pass a folder")
    check_folder_target(work_dir)
    check_file_target(work_dir / RESULT)
    check_replaceable_file(  # rewritten on every run, never over a user's file of that name
        work_dir / RESULT,
        "--work-dir",
        "an earlier cv result",
        lambda p: json_has_keys(p, ("folds", "pooled", "groups")),
    )
    resumed = []
    for k, fold_cfg in enumerate(configs):  # everything refused before the first run
        load_data(fold_cfg)
        resumed.append(resumable(fold_cfg, work_dir / f"fold{k}"))
    groups = select_groups(cfg, read_manifest(str(cfg.data.manifest), check_files=False)).groups
    per_fold: list[dict[str, Any]] = []
    pooled_ids, pooled_counts = [], []
    names: list[str] | None = None
    for k, fold_cfg in enumerate(configs):
        print(f"[cv] {'resuming' if resumed[k] else 'training'} fold {k} in {work_dir}/fold{k}")
        run = train_or_resume(fold_cfg, work_dir / f"fold{k}")
        if run.best_model is None:
            raise RuntimeError(f"fold {k} wrote no best.keras")
        valid, counts = fold_counts(fold_cfg, run.best_model)
        ids = valid.group_ids  # the manifest's group order: the same ids in every fold
        names = None if valid.classes is None else valid.classes.names
        metrics = GroupMetrics(groups, names)
        metrics.update(ids, counts)
        per_fold.append({"fold": k, "best_epoch": run.best_epoch, **metrics.result()})
        pooled_ids.append(ids)
        pooled_counts.append(counts)
    ids, counts = np.concatenate(pooled_ids), np.concatenate(pooled_counts)
    pooled = pooled_result(groups, ids, counts, bootstrap, cfg.train.seed, names)
    summary: dict[str, Any] = {
        "folds": per_fold,
        "groups": spread(per_fold, groups),
        "pooled": pooled,
        "runs": [str(work_dir / f"fold{k}") for k in range(len(configs))],
    }
    summary["table"] = cv_table(summary["groups"], pooled, per_fold)
    write_text(work_dir / RESULT, json.dumps(summary, indent=2) + "\n")
    return summary


def pooled_result(
    groups: Sequence[str],
    ids: np.ndarray,
    counts: np.ndarray,
    bootstrap: int,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The out-of-fold evaluation: every fold's counts summed, with bootstrap intervals.

    ``class_names``: the classes of multiclass counts [N, K, 4] (None for binary [N, 4]).
    """
    present = [g for i, g in enumerate(groups) if (ids == i).any()]
    local = np.array([present.index(groups[i]) for i in ids], np.int64)
    metrics = GroupMetrics(present, class_names)
    metrics.update(local, counts)
    result = metrics.result()
    add_intervals(result, counts, local, present, bootstrap, seed)
    return result


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = [float(v) for v in values if v is not None]
    if not known:
        return None, None
    std = float(np.std(known, ddof=1)) if len(known) > 1 else 0.0
    return float(np.mean(known)), std


def spread(per_fold: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> dict[str, Any]:
    """Per group (and mean/worst group): mean and std over the folds, and each fold's IoU."""
    out: dict[str, Any] = {}
    for g in groups:
        values = [f["groups"][g]["iou"] for f in per_fold]
        mean, std = _mean_std(values)
        out[g] = {"mean_iou": mean, "std_iou": std, "fold_iou": values}
    for key in ("mean_group_iou", "worst_group_iou"):
        values = [f[key] for f in per_fold]
        mean, std = _mean_std(values)
        out[key] = {"mean": mean, "std": std, "folds": values}
    return out


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None or std is None else f"{mean:.3f} +- {std:.3f}"


def _ci(value: float | None, interval: Sequence[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + ("" if interval is None else f" [{interval[0]:.2f}-{interval[1]:.2f}]")


def cv_table(
    groups: Mapping[str, Any], pooled: Mapping[str, Any], per_fold: Sequence[Mapping[str, Any]]
) -> str:
    """Per group: images over all folds, IoU mean +- std over folds, pooled IoU [95 % CI]."""
    header = ("group", "images", f"IoU over {len(per_fold)} folds", "pooled out-of-fold IoU")
    rows: list[tuple[str, ...]] = []
    for g, entry in pooled["groups"].items():
        spread_g = groups[g]
        rows.append(
            (
                g,
                str(entry["images"]),
                _pm(spread_g["mean_iou"], spread_g["std_iou"]),
                _ci(entry["iou"], entry["iou_ci"]),
            )
        )
    for key, label in (("mean_group_iou", "mean group"), ("worst_group_iou", "worst group")):
        s = groups[key]
        rows.append((label, "", _pm(s["mean"], s["std"]), _ci(pooled[key], pooled[f"{key}_ci"])))
    return format_table(header, rows, align="lrrr")
