"""Segmentation metrics from confusion counts, per image, per group and overall.

Everything starts from per-image counts ``(tp, fp, fn, tn)`` at a probability threshold
(:func:`confusion_counts`, on the device). Metrics are ratios of *summed* counts with an
explicit reduction, as in segmentation_models_pytorch:

* ``micro``: sum the counts of all images, then one ratio (every pixel weighs the same);
* ``micro-imagewise``: one ratio per image, then the mean over images;
* ``macro-imagewise``: the same for binary masks (one class); kept for multiclass.

Empty convention: a ratio whose denominator is 0 is **1.0**. IoU/Dice of an image with an
empty mask and an empty prediction is 1 (a perfect answer); precision with nothing
predicted is 1, recall with nothing to find is 1.

Per-group numbers (:class:`GroupMetrics`) are micro over the images of that group, so
they are exact sums however the images were batched or sharded.

Multiclass (K >= 2 softmax channels, the first the background): a pixel's class is the
argmax of the logits; pixels of the ignore index (:data:`segbalance.classes.IGNORE_INDEX`)
are not counted. Counts are per class, ``[B, K, 4]`` (:func:`class_confusion_counts`). A
group's ``iou`` (dice, precision, recall) is the **mean over the foreground classes** of the
per-class ratios of the group's summed counts. Absent-class rule: a class with no true and
no predicted pixel in a group (tp + fp + fn = 0) is left out of that group's mean and shown
as ``null``; a group where every foreground class is absent scores 1.0, as an empty binary
mask with an empty prediction does. Likewise a class never predicted in a group has no
precision there, and a class in none of its masks no recall (``null``, left out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from segbalance.errors import UserError

METRIC_NAMES = ("iou", "dice", "precision", "recall")
REDUCTIONS = ("micro", "micro-imagewise", "macro-imagewise")


def logit_threshold(threshold: float) -> float:
    """The logit above which ``sigmoid(logit) > threshold`` (0 < threshold < 1)."""
    if not 0.0 < threshold < 1.0:
        raise UserError(f"threshold must be strictly between 0 and 1, got {threshold}")
    return math.log(threshold / (1.0 - threshold))


def confusion_counts(y_true: Any, logits: Any, threshold: float = 0.5) -> tf.Tensor:
    """Per-sample ``[tp, fp, fn, tn]`` as f32[B, 4].

    A pixel is predicted foreground when ``sigmoid(logit) > threshold``, computed as
    ``logit > log(t / (1 - t))`` (no sigmoid, no precision loss). ``y_true`` counts as
    foreground where > 0.5. All channels of a sample are summed (multi-label micro).
    Counts are exact in float32 up to 2**24 pixels per image.

    Example:
        >>> confusion_counts(masks, model(images, training=False))  # [B, 4]
    """
    cut = logit_threshold(threshold)
    logits = tf.cast(logits, tf.float32)
    batch = tf.shape(logits)[0]
    pred = tf.reshape(logits > cut, [batch, -1])
    true = tf.reshape(tf.cast(y_true, tf.float32) > 0.5, [batch, -1])

    def count(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.cast(tf.logical_and(a, b), tf.float32), axis=1)

    not_pred, not_true = tf.logical_not(pred), tf.logical_not(true)
    return tf.stack(
        [
            count(pred, true),
            count(pred, not_true),
            count(not_pred, true),
            count(not_pred, not_true),
        ],
        axis=1,
    )


def class_confusion_counts(labels: Any, logits: Any) -> tf.Tensor:
    """Per-sample, per-class ``[tp, fp, fn, tn]`` as f32[B, K, 4] for K-channel logits.

    ``labels`` holds class indices (any shape with B first and H*W pixels); pixels of
    :data:`~segbalance.classes.IGNORE_INDEX` (any index outside 0..K-1) count nowhere.
    """
    logits = tf.cast(logits, tf.float32)
    k = logits.shape[-1]
    batch = tf.shape(logits)[0]
    pred = tf.reshape(tf.argmax(logits, axis=-1, output_type=tf.int32), [batch, -1])
    true = tf.reshape(tf.cast(labels, tf.int32), [batch, -1])
    valid = tf.cast((true >= 0) & (true < k), tf.float32)
    true_hot = tf.one_hot(true, k, dtype=tf.float32)  # an index outside 0..K-1 is all zeros
    pred_hot = tf.one_hot(pred, k, dtype=tf.float32) * valid[..., None]
    tp = tf.reduce_sum(true_hot * pred_hot, axis=1)
    fp = tf.reduce_sum(pred_hot, axis=1) - tp
    fn = tf.reduce_sum(true_hot, axis=1) - tp
    tn = tf.reduce_sum(valid, axis=1)[:, None] - tp - fp - fn
    return tf.stack([tp, fp, fn, tn], axis=-1)


def counts_for(y_true: Any, logits: Any, threshold: float = 0.5) -> tf.Tensor:
    """The model's counts: [B, 4] for one sigmoid channel, [B, K, 4] for K softmax ones."""
    if logits.shape[-1] == 1:
        return confusion_counts(y_true, logits, threshold)
    return class_confusion_counts(y_true, logits)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, num / safe, 1.0)


def metrics_from_counts(tp: Any, fp: Any, fn: Any, tn: Any) -> dict[str, np.ndarray]:
    """IoU, Dice (= F1), precision and recall from counts (arrays or scalars, float64).

    ``tn`` does not enter these metrics; it is taken so the four counts travel together.

    Example:
        >>> metrics_from_counts(3, 1, 2, 10)["iou"]  # 3 / (3 + 1 + 2)
        array(0.5)
    """
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def class_metrics(counts: Any) -> dict[str, np.ndarray]:
    """Per-class metrics of counts ``[..., K, 4]``; NaN where a ratio is 0/0.

    IoU and Dice are 0/0 where the class is absent (no true and no predicted pixel);
    precision where it is never predicted, recall where it is in no mask. Those classes are
    left out of a group's mean of that metric (module doc), so a class missing from a
    group's masks does not lift the group's recall to 1.
    """
    counts = np.asarray(counts, np.float64)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    undefined = {
        "iou": tp + fp + fn == 0,
        "dice": tp + fp + fn == 0,
        "precision": tp + fp == 0,
        "recall": tp + fn == 0,
    }
    values = metrics_from_counts(tp, fp, fn, 0)
    return {k: np.where(undefined[k], np.nan, v) for k, v in values.items()}


def summary_metrics(counts: Any, multiclass: bool) -> dict[str, np.ndarray]:
    """IoU, Dice, precision, recall of summed counts: ``[..., 4]`` or ``[..., K, 4]``.

    Multiclass: the mean over the present foreground classes (index 1..K-1), 1.0 where
    every one is absent (module doc).
    """
    counts = np.asarray(counts, np.float64)
    if not multiclass:
        return metrics_from_counts(*np.moveaxis(counts, -1, 0))
    out = {}
    for key, values in class_metrics(counts[..., 1:, :]).items():
        present = ~np.isnan(values)
        total = np.where(present, values, 0.0).sum(axis=-1)
        n = present.sum(axis=-1)
        out[key] = np.where(n > 0, total / np.maximum(n, 1), 1.0)
    return out


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def reduce_metrics(counts: Any, reduction: str = "micro") -> dict[str, float]:
    """Metrics of a set of images from their counts ``[N, 4]``.

    Args:
        counts: per-image ``tp, fp, fn, tn``.
        reduction: ``micro`` (sum counts, then ratio), ``micro-imagewise`` or
            ``macro-imagewise`` (ratio per image, then mean; equal for binary masks).
    """
    counts = np.asarray(counts, np.float64).reshape(-1, 4)
    if reduction == "micro":
        return {k: float(v) for k, v in metrics_from_counts(*counts.sum(axis=0)).items()}
    if reduction in ("micro-imagewise", "macro-imagewise"):
        if len(counts) == 0:
            raise UserError("no images to average over")
        per_image = metrics_from_counts(*counts.T)
        return {k: float(np.mean(v)) for k, v in per_image.items()}
    raise UserError(f"unknown reduction '{reduction}'. Valid: {', '.join(REDUCTIONS)}")


class GroupMetrics:
    """Accumulates per-image counts by group; numpy only, exact sums across workers.

    Args:
        group_names: the groups, in id order.
        class_names: the K classes of a multiclass model (counts ``[.., K, 4]``); None for
            binary (counts ``[.., 4]``).

    Example:
        >>> gm = GroupMetrics(["0", "1"])
        >>> gm.update(np.array([0, 1]), counts)  # counts f[2, 4]
        >>> gm.result()["worst_group_iou"]
    """

    def __init__(
        self, group_names: Sequence[str], class_names: Sequence[str] | None = None
    ) -> None:
        self.group_names = [str(g) for g in group_names]
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.shape = (4,) if self.class_names is None else (len(self.class_names), 4)
        self.counts = np.zeros((len(self.group_names), *self.shape), np.float64)
        self.images = np.zeros(len(self.group_names), np.int64)

    @property
    def multiclass(self) -> bool:
        """Whether counts are per class."""
        return self.class_names is not None

    def update(self, group_ids: Any, counts: Any) -> None:
        """Add per-image ``counts`` [B, 4] (or [B, K, 4]) of images in groups ``group_ids``."""
        ids = np.asarray(group_ids, np.int64).reshape(-1)
        counts = np.asarray(counts, np.float64).reshape(-1, *self.shape)
        if len(ids) != len(counts):
            raise ValueError(f"{len(ids)} group ids for {len(counts)} count rows")
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.group_names)):
            raise ValueError(f"group id out of range 0..{len(self.group_names) - 1}: {ids}")
        np.add.at(self.counts, ids, counts)
        np.add.at(self.images, ids, 1)

    def add_totals(self, counts: Any, images: Any) -> None:
        """Add counts already summed per group on the device: [G, 4] (or [G, K, 4]), [G]."""
        self.counts += np.asarray(counts, np.float64).reshape(self.counts.shape)
        self.images += np.asarray(images).reshape(-1).astype(np.int64)

    def _entry(self, counts: np.ndarray, n: int) -> dict[str, Any]:
        """One group's (or all images') metrics; per class too when multiclass."""
        entry: dict[str, Any] = {"images": n}
        values = summary_metrics(counts, self.multiclass)
        for key in METRIC_NAMES:
            entry[key] = float(values[key]) if n > 0 else None
        if self.class_names is not None:
            entry["classes"] = self._per_class(counts, n)
        return entry

    def _per_class(self, counts: np.ndarray, n: int) -> dict[str, dict[str, float | None]]:
        per = class_metrics(counts)
        return {
            name: {k: _optional(per[k][i]) if n > 0 else None for k in METRIC_NAMES}
            for i, name in enumerate(self.class_names or [])
        }

    def result(self) -> dict[str, Any]:
        """The evaluate JSON shape (without ``threshold``).

        A group without images reports ``images: 0`` and ``None`` metrics and does not
        enter ``mean_group_iou``/``worst_group_iou`` (both ``None`` if no group has images).
        Multiclass adds ``classes`` per group and overall (all pixels), and
        ``overall_iou`` is the mean over the foreground classes of the all-pixel IoU.
        """
        groups = {
            name: self._entry(counts, int(n))
            for name, counts, n in zip(self.group_names, self.counts, self.images, strict=True)
        }
        ious = [g["iou"] for g in groups.values() if g["images"] > 0]
        total = self.counts.sum(axis=0)
        seen = int(self.images.sum())
        overall = float(summary_metrics(total, self.multiclass)["iou"])
        out: dict[str, Any] = {"groups": groups}
        if self.class_names is not None:
            out["classes"] = self._per_class(total, seen)
        out.update(
            mean_group_iou=float(np.mean(ious)) if ious else None,
            worst_group_iou=float(np.min(ious)) if ious else None,
            overall_iou=overall if seen > 0 else None,
        )
        return out
