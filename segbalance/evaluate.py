"""Per-group evaluation of a saved model, at each mask's original size.

Metrics are computed where users look at masks: at the original size of each mask, not
at the training resolution. The model sees every image resized to its training size
(exactly as in training); its logits are resized bilinearly back to the mask's height and
width, thresholded at the model's threshold (``sigmoid(logit) > t``), and compared with the
original mask binarised by the manifest rule. Per-image confusion counts are summed per
group (:class:`segbalance.metrics.GroupMetrics`), so a group's IoU is one ratio of its
summed counts, not an average of per-image ratios.

Image size, threshold and groups come from the model file, so nothing has to be repeated
on the command line. Groups found in the data that the model was not trained on are
evaluated too and listed in ``unknown_groups`` of the returned dict (not in the JSON file,
whose keys are fixed).

Example:
    >>> result = evaluate("runs/demo/uniform/best.keras", "data/segbalance/manifest.csv",
    ...                   split="valid")  # doctest: +SKIP
    >>> print(format_evaluation(result))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from segbalance.artifacts import load_model
from segbalance.data.manifest import read_manifest
from segbalance.data.prepare import build_manifest
from segbalance.errors import InvalidDataError, UserError
from segbalance.io import check_replaceable_file, json_has_keys, write_text
from segbalance.metrics import GroupMetrics, confusion_counts, logit_threshold
from segbalance.pipeline.dataset import build_eval_dataset
from segbalance.pipeline.decode import decode_mask
from segbalance.pipeline.verify import DATA_ERRORS, check_files, undecodable
from segbalance.text import table_lines
from segbalance.uncertainty import DEFAULT_SAMPLES, bootstrap_iou

SPLITS = ("train", "valid", "test", "all")
JSON_KEYS = (
    "groups",
    "mean_group_iou",
    "worst_group_iou",
    "overall_iou",
    "threshold",
    "mean_group_iou_ci",
    "worst_group_iou_ci",
    "bootstrap",
)


def load_data(data: str | Path, split: str | None = None) -> Any:
    """A manifest from a CSV file or a data root, restricted to ``split``.

    Args:
        data: a manifest CSV written by ``segbalance prepare``, or a data root in one of
            the layouts ``prepare`` understands (checked on the fly, nothing written).
        split: ``train``, ``valid``, ``test``, or ``None``/``all`` for every row.

    Raises:
        UserError: missing path, unknown split, or no rows in the split.
    """
    path = Path(data)
    if path.is_dir():  # discovered and checked in memory, no manifest written
        try:
            manifest = build_manifest(path, progress=False)
        except InvalidDataError as err:
            # prepare's own advice names prepare's flags (--skip-invalid, --mask-*), which
            # evaluate does not have: say how to get there.
            raise InvalidDataError(
                err.problems,
                f"{path} cannot be evaluated as it is. Run 'segbalance prepare {path}' with "
                "the flags the fixes below name, then evaluate the manifest it writes",
            ) from err
    elif path.is_file():
        manifest = read_manifest(path)
    else:
        raise UserError(f"{data} is neither a manifest CSV nor a data folder")
    if split is None or split == "all":
        return manifest
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'. Valid: {', '.join(SPLITS)}")
    chosen = manifest.select(split=split)
    if len(chosen) == 0:
        present = sorted(set(manifest.split))
        raise UserError(
            f"{data} has no '{split}' rows (its splits: {', '.join(present)}); "
            "use --split all or another split"
        )
    return chosen


def _original_masks(manifest: Any) -> Iterator[Any]:
    """Each row's mask at its own size, f32[h, w, 1] in {0, 1}, in row order (prefetched)."""
    # each row's own mask_rule, so evaluation scores the foreground that was trained
    paths = np.asarray(manifest.mask_paths(), dtype=str)
    rules = np.asarray(manifest.mask_rule, dtype=str)
    ds = tf.data.Dataset.from_tensor_slices((paths, rules))
    ds = ds.map(decode_mask, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return iter(ds.prefetch(tf.data.AUTOTUNE))


def _count_fn(threshold: float) -> Any:
    """tf.function: (logits f[H,W,1] at training size, mask f[h,w,1]) -> counts f[4]."""

    @tf.function(reduce_retracing=True)
    def count(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        size = tf.shape(mask)[:2]
        resized = tf.image.resize(logits[None], size, method="bilinear")
        return confusion_counts(mask[None], resized, threshold)[0]

    return count


def predict_counts(
    model: Any, manifest: Any, image_size: tuple[int, int], threshold: float, batch_size: int
) -> np.ndarray:
    """Per-row confusion counts ``[N, 4]`` (tp, fp, fn, tn) at the original mask sizes."""
    ds = build_eval_dataset(manifest, image_size=image_size, batch_size=batch_size)
    masks = _original_masks(manifest)
    count = _count_fn(threshold)
    rows = []
    for batch in ds:
        logits = model(batch["image"], training=False)
        for i in range(int(logits.shape[0])):
            rows.append(np.asarray(count(logits[i], next(masks))))
    return np.asarray(rows, np.float64).reshape(-1, 4)


def evaluate(
    model_path: str | Path,
    data: str | Path,
    split: str | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
    bootstrap: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a saved segbalance model per group.

    Args:
        model_path: a ``.keras`` file written by ``segbalance train`` (carries its meta).
        data: manifest CSV or data root (see :func:`load_data`).
        split: ``train``/``valid``/``test``, or ``None``/``all`` for every row.
        threshold: probability threshold; default the model's.
        batch_size: images per forward pass.
        bootstrap: replicates of the 95 % intervals (:mod:`segbalance.uncertainty`); 0 for
            none (the ``*_ci`` values are then null).
        seed: fixes the bootstrap replicates.

    Returns:
        ``{"groups": {g: {"images", "iou", "dice", "precision", "recall", "iou_ci"}},
        "mean_group_iou", "worst_group_iou", "overall_iou", "threshold",
        "mean_group_iou_ci", "worst_group_iou_ci", "bootstrap"}`` plus ``unknown_groups``
        (data groups the model was not trained on) and ``rows``.
    """
    if bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0 (0: no intervals), got {bootstrap}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    manifest = load_data(data, split)
    check_files(manifest, str(data))  # a file changed since prepare fails before the model
    model, meta = load_model(model_path)
    t = float(meta.threshold if threshold is None else threshold)
    logit_threshold(t)  # validates 0 < t < 1 with a clear message
    size = (int(meta.image_size[0]), int(meta.image_size[1]))
    try:
        counts = predict_counts(model, manifest, size, t, batch_size)
    except DATA_ERRORS as err:  # traced to the files, with the pipeline's own decoder
        problems = undecodable(manifest, range(len(manifest)))
        if not problems:
            raise
        raise InvalidDataError(problems, "the pipeline cannot decode these files") from err
    present = [g for g in manifest.groups if g in set(manifest.group)]
    local = {g: i for i, g in enumerate(present)}
    ids = np.array([local[g] for g in manifest.group], np.int64)
    metrics = GroupMetrics(present)
    metrics.update(ids, counts)
    result: dict[str, Any] = metrics.result()
    add_intervals(result, counts, ids, present, bootstrap, seed)
    result["threshold"] = t
    result["unknown_groups"] = [g for g in present if g not in set(meta.groups)]
    result["rows"] = len(manifest)
    return result


def add_intervals(
    result: dict[str, Any],
    counts: np.ndarray,
    ids: np.ndarray,
    groups: list[str],
    samples: int,
    seed: int,
) -> None:
    """Put bootstrap intervals into an evaluation result (null when ``samples`` is 0)."""
    result["bootstrap"] = {"samples": samples, "level": 0.95, "seed": seed}
    if samples == 0:
        for name in groups:
            result["groups"][name]["iou_ci"] = None
        result["mean_group_iou_ci"] = result["worst_group_iou_ci"] = None
        return
    ci = bootstrap_iou(counts, ids, len(groups), samples=samples, seed=seed)
    for name, interval in zip(groups, ci.groups, strict=True):
        result["groups"][name]["iou_ci"] = None if interval is None else list(interval)
    result["mean_group_iou_ci"] = None if ci.mean is None else list(ci.mean)
    result["worst_group_iou_ci"] = None if ci.worst is None else list(ci.worst)


def json_view(result: dict[str, Any]) -> dict[str, Any]:
    """Exactly the documented JSON keys, in order."""
    return {key: result[key] for key in JSON_KEYS}


def is_result_json(path: str | Path) -> bool:
    """True when ``path`` is a JSON file that ``segbalance evaluate --json`` wrote."""
    return json_has_keys(path, ("groups", "worst_group_iou"))


def check_result_target(path: str | Path) -> None:
    """Refuse to replace a file that is not an earlier evaluation result.

    ``--json manifest.json`` (the manifest's sidecar) or a config file given by mistake
    must not be overwritten: an existing file is replaced only when it parses as one.

    Raises:
        UserError: naming the file.
    """
    check_replaceable_file(path, "--json", "an earlier evaluation result", is_result_json)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Write the evaluation JSON atomically (never over a file that is not a result)."""
    check_result_target(path)
    write_text(path, json.dumps(json_view(result), indent=2) + "\n")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_ci(interval: list[float] | None) -> str:
    return "-" if interval is None else f"{interval[0]:.3f}-{interval[1]:.3f}"


def format_evaluation(result: dict[str, Any]) -> str:
    """A terminal table: one row per group, then the summary lines.

    Example:
        >>> print(format_evaluation(evaluate(model, manifest)))  # doctest: +SKIP
        group  images  iou     dice    precision  recall
        0          37  0.8123  0.8965  0.9012     0.8919
        ...
    """
    unknown = set(result.get("unknown_groups", []))
    header = ("group", "images", "iou", "iou 95% CI", "dice", "precision", "recall")
    rows: list[tuple[str, ...]] = []
    for name, g in result["groups"].items():
        label = f"{name}*" if name in unknown else name
        values = (_fmt(g[k]) for k in ("dice", "precision", "recall"))
        rows.append((label, str(g["images"]), _fmt(g["iou"]), _fmt_ci(g.get("iou_ci")), *values))
    lines = table_lines(header, rows)
    lines.append("")
    mean_ci, worst_ci = result.get("mean_group_iou_ci"), result.get("worst_group_iou_ci")
    lines.append(f"mean_group_iou   {_fmt(result['mean_group_iou'])}   (95% CI {_fmt_ci(mean_ci)})")
    lines.append(
        f"worst_group_iou  {_fmt(result['worst_group_iou'])}   (95% CI {_fmt_ci(worst_ci)})"
    )
    lines.append(f"overall_iou      {_fmt(result['overall_iou'])}   (all pixels)")
    lines.append(f"threshold        {result['threshold']:g}   (metrics at original mask size)")
    if unknown:
        lines.append(f"* not a training group of this model: {', '.join(sorted(unknown))}")
    return "\n".join(lines)
