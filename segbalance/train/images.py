"""TensorBoard images: a few fixed validation images per group, the prediction overlaid.

A per-group IoU says *that* a group fails; the picture says *how* (missed nails, a
background taken for a nail, a border off by a few pixels). :class:`GroupImages` is a
Keras callback (the trainer's protocol, :mod:`segbalance.train.trainer`) that run.py adds
to every run. At the start it picks the first :data:`PER_GROUP` validation rows of every
group (manifest order, so the same images every epoch and on a resume) and decodes them
as validation does; after each epoch it predicts them and writes, per group, one image
summary ``group_images/<g>`` at the epoch's step (the step of the ``group_iou/<g>``
scalars): the image with the predicted foreground tinted red and the true mask's contour
drawn in green. A multiclass run (the manifest has classes) writes three panels side by
side instead: the image, the true label map and the predicted one (argmax), each class in
its colour (:meth:`segbalance.classes.ClassSet.palette`), ignored pixels gray.

tensorflow-cpu ships no tensorboard package, which ``tf.summary.image`` needs, so the
summary is written as that function writes it: ``tf.summary.write`` of the tensor
``[width, height, png, png, ...]`` with the image plugin's metadata (as logs.py writes
scalars).

Example:
    >>> train(cfg, "runs/a")  # doctest: +SKIP
    >>> # tensorboard --logdir runs/a/logs  -> Images: group_images/0, group_images/1, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from segbalance.data.manifest import Manifest
from segbalance.overlays import erode
from segbalance.pipeline.decode import decode_pair

PER_GROUP = 3  # images per group and epoch: enough to see a pattern, cheap to predict
TAG = "group_images"
TINT = np.array([255.0, 40.0, 40.0], np.float32)  # predicted foreground
CONTOUR = np.array([40.0, 255.0, 40.0], np.float32)  # the true mask's border
ALPHA = 0.45  # tint strength: the photo stays readable under the prediction
IGNORED = np.array([128, 128, 128], np.uint8)  # ignored pixels of a true label map


def pick_rows(valid: Manifest, per_group: int = PER_GROUP) -> dict[str, list[int]]:
    """The first ``per_group`` valid rows of every group that has any (manifest order)."""
    picked: dict[str, list[int]] = {}
    for i, g in enumerate(valid.group):
        rows = picked.setdefault(g, [])
        if len(rows) < per_group:
            rows.append(i)
    return {g: picked[g] for g in valid.groups if g in picked}


def contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of a {0, 1} mask [H, W] that touch the background (3x3 neighbourhood)."""
    inside = mask > 0.5
    # The image border is not a contour: beyond it counts as foreground.
    return inside & ~erode(inside, outside=True)


def overlay(image: np.ndarray, predicted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: ``image`` (0..255) tinted where ``predicted``, true contour drawn."""
    out = np.asarray(image, np.float32).copy()
    fg = predicted.astype(bool)
    out[fg] = (1.0 - ALPHA) * out[fg] + ALPHA * TINT
    out[contour(mask)] = CONTOUR
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def colour_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: each class index in its palette colour, others (ignored) gray."""
    index = np.asarray(labels).astype(np.int64)
    inside = (index >= 0) & (index < len(palette))
    out = np.where(inside[..., None], palette[np.clip(index, 0, len(palette) - 1)], IGNORED)
    return out.astype(np.uint8)


def label_panels(
    image: np.ndarray, predicted: np.ndarray, labels: np.ndarray, palette: np.ndarray
) -> np.ndarray:
    """uint8 [H, 3W, 3]: the image, the true label map, the predicted one (multiclass)."""
    photo = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    true, pred = colour_labels(labels, palette), colour_labels(predicted, palette)
    return np.concatenate([photo, true, pred], axis=1)


def write_images(writer: Any, tag: str, step: int, images: Sequence[np.ndarray]) -> None:
    """An image summary of uint8 [H, W, 3] images, as ``tf.summary.image`` writes it."""
    meta = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_BLOB_SEQUENCE)
    meta.plugin_data.plugin_name = "images"
    height, width = images[0].shape[:2]
    blobs = [tf.io.encode_png(tf.constant(im)) for im in images]
    tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height)), *blobs])
    with writer.as_default(step=step):
        tf.summary.write(tag, tensor, metadata=meta)


class GroupImages(keras.callbacks.Callback):
    """Each epoch, ``per_group`` fixed validation images per group with the prediction.

    Args:
        valid: the run's validation rows.
        image_size: (height, width) the model takes.
        log_dir: the run's TensorBoard folder.
        threshold: probability threshold of a foreground pixel (``train.threshold``).
        per_group: images per group.
    """

    def __init__(
        self,
        valid: Manifest,
        image_size: Sequence[int],
        log_dir: str | Path,
        threshold: float = 0.5,
        per_group: int = PER_GROUP,
    ) -> None:
        super().__init__()
        self.valid, self.size, self.log_dir = valid, tuple(image_size), Path(log_dir)
        self.logit = float(np.log(threshold / (1.0 - threshold)))
        self.per_group = per_group
        self.rows: dict[str, list[int]] = {}
        self.batch: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.writer: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        trainer = self.params.get("trainer")
        if trainer is not None and not trainer.runtime.chief:
            return  # only the chief writes files
        self.rows = pick_rows(self.valid, self.per_group)
        images, masks = self.valid.image_paths(), self.valid.mask_paths()
        for g, rows in self.rows.items():
            pairs = [  # tensors, as the pipeline passes them (its py functions take bytes)
                decode_pair(
                    tf.constant(images[i]),
                    tf.constant(masks[i]),
                    self.size,
                    tf.constant(self.valid.mask_rule[i]),
                    classes=self.valid.classes,
                )
                for i in rows
            ]
            self.batch[g] = (
                np.stack([p[0].numpy() for p in pairs]),
                np.stack([p[1].numpy()[..., 0] for p in pairs]),
            )
        if self.batch:
            self.writer = tf.summary.create_file_writer(
                str(self.log_dir), filename_suffix=".images"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.writer is None:
            return
        spec = self.valid.classes
        for g, (images, masks) in self.batch.items():
            logits = np.asarray(self.model(tf.constant(images), training=False), np.float32)
            if spec is None:
                predicted = logits[..., 0] > self.logit
                trios = zip(images, predicted, masks, strict=True)
                drawn = [overlay(im, p, m) for im, p, m in trios]
            else:
                predicted, palette = logits.argmax(axis=-1), spec.palette()
                trios = zip(images, predicted, masks, strict=True)
                drawn = [label_panels(im, p, m, palette) for im, p, m in trios]
            write_images(self.writer, f"{TAG}/{g}", epoch + 1, drawn)
        self.writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
