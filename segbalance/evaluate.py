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

A multiclass model is evaluated on data with its classes (names and values, else refused):
argmax of the resized logits (no threshold), ignored pixels count nowhere, per-class counts
``[K, 4]`` summed per group, whose ``iou`` is the mean over its foreground classes (absent
classes left out, ``null``: :mod:`segbalance.metrics`). The JSON adds ``classes``.

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

from segbalance.artifacts import ModelMeta, load_model, read_meta, refuse_threshold
from segbalance.classes import ClassSet
from segbalance.data.class_masks import ClassChoice
from segbalance.data.manifest import SPLITS as MANIFEST_SPLITS
from segbalance.data.manifest import Manifest, read_manifest
from segbalance.data.prepare import build_manifest
from segbalance.errors import InvalidDataError, Problem, UserError
from segbalance.io import check_replaceable_file, json_has_keys, write_text
from segbalance.label_masks import read_label_mask
from segbalance.metrics import GroupMetrics, counts_for, logit_threshold
from segbalance.pipeline.decode import decode_image, decode_mask, resize_image
from segbalance.pipeline.verify import DATA_ERRORS, FIX, check_files, undecodable
from segbalance.text import table_lines
from segbalance.uncertainty import DEFAULT_SAMPLES, bootstrap_iou

SPLITS = (*MANIFEST_SPLITS, "all")
MULTICLASS_HEADER = (
    "IoU per group and class; iou = mean over foreground classes (background excluded); "
    "'-' = class absent (no true and no predicted pixel)"
)
MULTICLASS_FOOT = "classes          most probable per pixel, at original mask size (dice: --json)"
JSON_KEYS = (
    "groups",
    "classes",  # multiclass only
    "mean_group_iou",
    "worst_group_iou",
    "overall_iou",
    "threshold",
    "mean_group_iou_ci",
    "worst_group_iou_ci",
    "bootstrap",
)


def load_data(data: str | Path, split: str | None = None, classes: ClassSet | None = None) -> Any:
    """A manifest from a CSV file or a data root, restricted to ``split``.

    Args:
        data: a manifest CSV written by ``segbalance prepare``, or a data root in one of
            the layouts ``prepare`` understands (checked on the fly, nothing written).
        split: ``train``, ``valid``, ``test``, or ``None``/``all`` for every row.
        classes: a multiclass model's classes: a data root's masks are read as theirs.

    Raises:
        UserError: missing path, unknown split, or no rows in the split.
    """
    path = Path(data)
    if path.is_dir():  # discovered and checked in memory, no manifest written
        # The masks of a data root are read with the model's classes: say so in problems.
        model_classes = None if classes is None else ClassChoice(classes, "the model's classes")
        try:
            manifest = build_manifest(path, progress=False, classes=model_classes)
        except InvalidDataError as err:
            # prepare's own advice names prepare's flags (--skip-invalid, --mask-*), which
            # evaluate does not have: say how to get there.
            flags = " --classes FILE" if classes is not None else ""
            raise InvalidDataError(
                err.problems,
                f"{path} cannot be evaluated as it is. Run 'segbalance prepare {path}"
                f"{flags}' with the flags the fixes below name, then evaluate the manifest "
                "it writes",
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


def _original_masks(manifest: Manifest) -> Iterator[Any]:
    """Each row's mask at its own size, f32[h, w, 1] in {0, 1}, in row order (prefetched)."""
    # each row's own mask_rule, so evaluation scores the foreground that was trained
    paths = np.asarray(manifest.mask_paths(), dtype=str)
    rules = np.asarray(manifest.mask_rule, dtype=str)
    ds = tf.data.Dataset.from_tensor_slices((paths, rules))
    ds = ds.map(decode_mask, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return iter(ds.prefetch(tf.data.AUTOTUNE))


def _label_masks(manifest: Manifest, spec: ClassSet) -> Iterator[np.ndarray]:
    """Each row's label mask at its own size, uint8 [h, w] class indices (255 ignored)."""
    for name, rule in zip(manifest.mask, manifest.mask_rule, strict=True):
        try:
            yield read_label_mask(manifest.root / name, spec, rule)
        except (OSError, SyntaxError, ValueError) as err:
            problem = Problem(name, f"cannot be read as a label mask ({err})", FIX)
            raise InvalidDataError([problem], "a mask cannot be read") from err


def _image_batches(manifest: Manifest, image_size: tuple[int, int], batch_size: int) -> Any:
    """Every row's image, decoded and resized as in training, in row order and batches."""
    paths = np.asarray(manifest.image_paths(), dtype=str)
    turns = manifest.orientation.astype(np.int32)

    def load(path: tf.Tensor, turn: tf.Tensor) -> tf.Tensor:
        return resize_image(decode_image(path, turn), image_size)

    ds = tf.data.Dataset.from_tensor_slices((paths, turns))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)


def _count_fn(threshold: float) -> Any:
    """tf.function: (logits f[H,W,C] at training size, mask at its own size) -> counts.

    One channel: mask f[h,w,1], counts f[4]. K channels: a label mask, counts f[K, 4].
    """

    @tf.function(reduce_retracing=True)
    def count(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        size = tf.shape(mask)[:2]
        resized = tf.image.resize(logits[None], size, method="bilinear")
        return counts_for(mask[None], resized, threshold)[0]

    return count


def predict_counts(
    model: Any, manifest: Manifest, image_size: tuple[int, int], threshold: float, batch_size: int
) -> np.ndarray:
    """Per-row confusion counts at the original mask sizes: ``[N, 4]`` (tp, fp, fn, tn).

    A manifest with classes gives per-class counts ``[N, K, 4]`` (argmax, no threshold).
    """
    spec = manifest.classes
    masks = _original_masks(manifest) if spec is None else _label_masks(manifest, spec)
    count = _count_fn(threshold)
    rows = []
    for images in _image_batches(manifest, image_size, batch_size):
        logits = model(images, training=False)
        for i in range(int(logits.shape[0])):
            rows.append(np.asarray(count(logits[i], next(masks))))
    shape = (4,) if spec is None else (spec.num_classes, 4)
    return np.asarray(rows, np.float64).reshape(-1, *shape)


def _differences(model: ClassSet, data: ClassSet) -> list[str]:
    """How two class sets differ, in words (empty when names and values agree)."""
    if model.names != data.names:
        return [f"names: model {', '.join(model.names)}; data {', '.join(data.names)}"]
    return [
        f"'{name}' has value {a} in the model, {b} in the data"
        for name, a, b in zip(model.names, model.values, data.values, strict=True)
        if a != b
    ]


def check_classes(meta: ModelMeta, manifest: Manifest, model_path: Any, data: Any) -> None:
    """Refuse data whose classes are not the model's (binary vs multiclass, names, values).

    Raises:
        UserError: naming both files and what differs.
    """
    mine, theirs = meta.class_set, manifest.classes
    if mine is None:
        if theirs is None:
            return
        raise UserError(
            f"{model_path} is a binary model (one foreground channel), but {data} has "
            f"classes {', '.join(theirs.names)}: evaluate a model trained on these classes"
        )
    if theirs is None:
        raise UserError(
            f"{model_path} is a {mine.num_classes}-class model ({', '.join(mine.names)}), "
            f"but {data} has binary masks (no classes): give the manifest written by "
            "'segbalance prepare ROOT --classes CLASSES.yaml' with the model's classes file"
        )
    differ = _differences(mine, theirs)
    if differ:
        raise UserError(
            f"the classes of {model_path} and {data} differ ({'; '.join(differ)}): prepare "
            "the data with the classes file the model was trained with"
        )


def _counts(
    model: Any, manifest: Manifest, meta: ModelMeta, threshold: float, batch_size: int
) -> np.ndarray:
    """:func:`predict_counts`, with a decode failure traced to its files."""
    size = (int(meta.image_size[0]), int(meta.image_size[1]))
    try:
        return predict_counts(model, manifest, size, threshold, batch_size)
    except DATA_ERRORS as err:  # traced to the files, with the pipeline's own decoder
        problems = undecodable(manifest, range(len(manifest)))
        if not problems:
            raise
        raise InvalidDataError(problems, "the pipeline cannot decode these files") from err


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
        threshold: probability threshold; default the model's (binary models only).
        batch_size: images per forward pass.
        bootstrap: replicates of the 95 % intervals (:mod:`segbalance.uncertainty`); 0 for
            none (the ``*_ci`` values are then null).
        seed: fixes the bootstrap replicates.

    Returns:
        ``{"groups": {g: {"images", "iou", "dice", "precision", "recall", "iou_ci"}},
        "mean_group_iou", "worst_group_iou", "overall_iou", "threshold",
        "mean_group_iou_ci", "worst_group_iou_ci", "bootstrap"}`` plus ``unknown_groups``
        (data groups the model was not trained on) and ``rows``. A multiclass model adds
        ``classes`` (``{name: {"iou", "dice", "precision", "recall"}}``) to each group and
        at the top (all pixels); a group's ``iou`` is then its foreground classes' mean.

    Raises:
        UserError: bad arguments or data, or data whose classes are not the model's.
    """
    if bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0 (0: no intervals), got {bootstrap}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    meta = read_meta(model_path)
    manifest = load_data(data, split, meta.class_set)
    check_classes(meta, manifest, model_path, data)  # before any file is opened
    refuse_threshold(meta, threshold, model_path)
    check_files(manifest, str(data))  # a file changed since prepare fails before the model
    model, meta = load_model(model_path)
    t = float(meta.threshold if threshold is None else threshold)
    logit_threshold(t)  # validates 0 < t < 1 with a clear message
    counts = _counts(model, manifest, meta, t, batch_size)
    present = [g for g in manifest.groups if g in set(manifest.group)]
    local = {g: i for i, g in enumerate(present)}
    ids = np.array([local[g] for g in manifest.group], np.int64)
    metrics = GroupMetrics(present, manifest.classes.names if manifest.classes else None)
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
    """Exactly the documented JSON keys, in order (``classes`` only for multiclass)."""
    return {key: result[key] for key in JSON_KEYS if key in result}


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


def _group_rows(result: dict[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The table's header and one row per group (per class IoU when multiclass)."""
    unknown = set(result.get("unknown_groups", []))
    names = list(result.get("classes", {}))
    extra = names or ["dice", "precision", "recall"]
    header = ("group", "images", "iou", "iou 95% CI", *extra)
    rows: list[tuple[str, ...]] = []
    for name, g in result["groups"].items():
        label = f"{name}*" if name in unknown else name
        if names:
            values = [_fmt(g["classes"][c]["iou"]) for c in names]
        else:
            values = [_fmt(g[k]) for k in extra]
        rows.append((label, str(g["images"]), _fmt(g["iou"]), _fmt_ci(g.get("iou_ci")), *values))
    if names:  # the all-pixel row
        images = str(sum(g["images"] for g in result["groups"].values()))
        per_class = [_fmt(result["classes"][c]["iou"]) for c in names]
        rows.append(("all pixels", images, _fmt(result["overall_iou"]), "", *per_class))
    return header, rows


def format_evaluation(result: dict[str, Any]) -> str:
    """A terminal table: one row per group (multiclass: x class IoU), then the summary lines.

    Example:
        >>> print(format_evaluation(evaluate(model, manifest)))  # doctest: +SKIP
        group  images  iou     dice    precision  recall
        0          37  0.8123  0.8965  0.9012     0.8919
        ...
    """
    multiclass = "classes" in result
    lines = [MULTICLASS_HEADER] if multiclass else []
    header, rows = _group_rows(result)
    lines += table_lines(header, rows)
    lines.append("")
    mean_ci, worst_ci = result.get("mean_group_iou_ci"), result.get("worst_group_iou_ci")
    lines.append(f"mean_group_iou   {_fmt(result['mean_group_iou'])}   (95% CI {_fmt_ci(mean_ci)})")
    lines.append(
        f"worst_group_iou  {_fmt(result['worst_group_iou'])}   (95% CI {_fmt_ci(worst_ci)})"
    )
    which = ", mean over foreground classes" if multiclass else ""
    lines.append(f"overall_iou      {_fmt(result['overall_iou'])}   (all pixels{which})")
    last = f"threshold        {result['threshold']:g}   (metrics at original mask size)"
    lines.append(MULTICLASS_FOOT if multiclass else last)
    unknown = set(result.get("unknown_groups", []))
    if unknown:
        lines.append(f"* not a training group of this model: {', '.join(sorted(unknown))}")
    return "\n".join(lines)
