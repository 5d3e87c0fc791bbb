"""Segmentation losses on logits, and weighted sums of them written as text.

Every loss takes ``y_true`` (f32 [B, H, W, C] in {0, 1}) and the model's **logits**, casts
both to float32 (mixed precision safe) and returns one value per sample from ``call``,
so a distributed loop can average with ``tf.nn.compute_average_loss`` over the global
batch. Calling the loss object (``loss(y_true, logits)``) gives the usual batch mean.

Terms (binary; ``p = sigmoid(logits)``; sums run over the pixels of one image):

* ``bce``: mean binary cross-entropy.
* ``dice``: ``1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)`` with ``s = smooth = 1``, so an
  empty mask with an empty prediction costs 0 instead of 0/0.
* ``focal``: mean of ``alpha_t (1 - p_t)^gamma BCE`` (alpha for foreground, 1 - alpha for
  background; Lin et al. 2017).
* ``tversky``: ``1 - (TP + s) / (TP + alpha FP + beta FN + s)`` on soft counts.
* ``lovasz``: Lovász hinge per image (Berman et al. 2018), on the logits.

Multiclass (``classes`` = K >= 2, softmax over K logits; ``y_true`` holds class indices
with :data:`~segbalance.classes.IGNORE_INDEX` for pixels that count nowhere; ``w`` are the
class weights, all 1 by default):

* ``ce``: cross-entropy, ``sum(w_y CE) / sum(w_y)`` over the image's counted pixels.
* ``dice``/``tversky``: the soft score of each class over the image, ``1 -`` the
  ``w``-weighted mean over the K classes (background included, as in smp).
* ``focal``: ``-w_y (1 - p_y)^gamma log p_y``, mean over counted pixels (``w`` plays
  alpha's part; ``focal_alpha`` is binary only).
* ``lovasz``: Lovász-softmax over the classes present in the image (unweighted).

For binary models ``ce`` is ``bce``.

Example:
    >>> loss = get_loss(LossConfig(name="0.5*bce+dice"))
    >>> per_sample = loss.call(masks, logits)  # shape [B]
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from segbalance.classes import IGNORE_INDEX
from segbalance.config import LossConfig
from segbalance.errors import UserError, unknown_name_error

Params = dict[str, float]
TermFn = Callable[[tf.Tensor, tf.Tensor, Params], tf.Tensor]


def _flat(y_true: Any, logits: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Both as float32 [B, N] (N = every pixel and channel of a sample)."""
    logits = tf.cast(logits, tf.float32)
    y = tf.cast(y_true, tf.float32)
    batch = tf.shape(logits)[0]
    return tf.reshape(y, [batch, -1]), tf.reshape(logits, [batch, -1])


def bce(y: tf.Tensor, z: tf.Tensor, params: Params) -> tf.Tensor:
    """Mean binary cross-entropy per sample, from logits."""
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z), axis=1)


def dice(y: tf.Tensor, z: tf.Tensor, params: Params) -> tf.Tensor:
    """Soft Dice loss per sample with additive smoothing ``params['smooth']``."""
    p = tf.sigmoid(z)
    s = params["smooth"]
    inter = tf.reduce_sum(p * y, axis=1)
    total = tf.reduce_sum(p, axis=1) + tf.reduce_sum(y, axis=1)
    return 1.0 - (2.0 * inter + s) / (total + s)


def focal(y: tf.Tensor, z: tf.Tensor, params: Params) -> tf.Tensor:
    """Alpha-balanced binary focal loss, mean over pixels."""
    alpha, gamma = params["focal_alpha"], params["focal_gamma"]
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)
    p = tf.sigmoid(z)
    p_t = y * p + (1.0 - y) * (1.0 - p)
    alpha_t = y * alpha + (1.0 - y) * (1.0 - alpha)
    return tf.reduce_mean(alpha_t * tf.pow(1.0 - p_t, gamma) * ce, axis=1)


def tversky(y: tf.Tensor, z: tf.Tensor, params: Params) -> tf.Tensor:
    """Tversky loss on soft counts (alpha weighs false positives, beta false negatives)."""
    p = tf.sigmoid(z)
    s = params["smooth"]
    tp = tf.reduce_sum(p * y, axis=1)
    fp = tf.reduce_sum(p * (1.0 - y), axis=1)
    fn = tf.reduce_sum((1.0 - p) * y, axis=1)
    return 1.0 - (tp + s) / (tp + params["tversky_alpha"] * fp + params["tversky_beta"] * fn + s)


def lovasz(y: tf.Tensor, z: tf.Tensor, params: Params) -> tf.Tensor:
    """Lovász hinge per image: errors sorted descending, dotted with the Jaccard gradient."""
    signs = 2.0 * y - 1.0
    errors = 1.0 - z * signs
    order = tf.argsort(errors, axis=1, direction="DESCENDING", stable=True)
    errors_sorted = tf.gather(errors, order, batch_dims=1)
    gt_sorted = tf.gather(y, order, batch_dims=1)
    gts = tf.reduce_sum(gt_sorted, axis=1, keepdims=True)
    intersection = gts - tf.cumsum(gt_sorted, axis=1)
    union = gts + tf.cumsum(1.0 - gt_sorted, axis=1)
    jaccard = 1.0 - intersection / union
    # Discrete derivative of the Jaccard loss along the sorted errors.
    grad = tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    return tf.reduce_sum(tf.nn.relu(errors_sorted) * tf.stop_gradient(grad), axis=1)


LOSSES: dict[str, TermFn] = {
    "bce": bce,
    "ce": bce,
    "dice": dice,
    "focal": focal,
    "tversky": tversky,
    "lovasz": lovasz,
}

# Multiclass terms: (one-hot y [B, N, K], counted-pixel mask [B, N], logits [B, N, K],
# params, class weights [K]) -> [B].
ClassTermFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, Params, tf.Tensor], tf.Tensor]


def _weighted_class_mean(per_class: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(per_class * w, axis=1) / tf.reduce_sum(w)


def ce_classes(y: tf.Tensor, v: tf.Tensor, z: tf.Tensor, params: Params, w: tf.Tensor) -> tf.Tensor:
    """Class-weighted cross-entropy per sample over the counted pixels."""
    nll = -tf.reduce_sum(y * tf.nn.log_softmax(z, axis=-1), axis=-1)
    pixel_w = tf.reduce_sum(y * w, axis=-1)  # 0 on ignored pixels (y is all zeros there)
    return tf.math.divide_no_nan(
        tf.reduce_sum(pixel_w * nll, axis=1), tf.reduce_sum(pixel_w, axis=1)
    )


def dice_classes(
    y: tf.Tensor, v: tf.Tensor, z: tf.Tensor, params: Params, w: tf.Tensor
) -> tf.Tensor:
    """1 - the weighted mean over classes of each class's soft Dice score."""
    p = tf.nn.softmax(z, axis=-1) * v[..., None]
    s = params["smooth"]
    inter = tf.reduce_sum(p * y, axis=1)
    total = tf.reduce_sum(p, axis=1) + tf.reduce_sum(y, axis=1)
    return 1.0 - _weighted_class_mean((2.0 * inter + s) / (total + s), w)


def focal_classes(
    y: tf.Tensor, v: tf.Tensor, z: tf.Tensor, params: Params, w: tf.Tensor
) -> tf.Tensor:
    """Softmax focal loss, class weights as alpha, mean over the counted pixels."""
    log_p = tf.nn.log_softmax(z, axis=-1)
    log_pt = tf.reduce_sum(y * log_p, axis=-1)
    alpha = tf.reduce_sum(y * w, axis=-1)
    term = -alpha * tf.pow(1.0 - tf.exp(log_pt), params["focal_gamma"]) * log_pt
    return tf.math.divide_no_nan(tf.reduce_sum(term, axis=1), tf.reduce_sum(v, axis=1))


def tversky_classes(
    y: tf.Tensor, v: tf.Tensor, z: tf.Tensor, params: Params, w: tf.Tensor
) -> tf.Tensor:
    """1 - the weighted mean over classes of each class's Tversky index."""
    p = tf.nn.softmax(z, axis=-1) * v[..., None]
    s = params["smooth"]
    tp = tf.reduce_sum(p * y, axis=1)
    fp = tf.reduce_sum(p, axis=1) - tp
    fn = tf.reduce_sum(y, axis=1) - tp
    score = (tp + s) / (tp + params["tversky_alpha"] * fp + params["tversky_beta"] * fn + s)
    return 1.0 - _weighted_class_mean(score, w)


def lovasz_classes(
    y: tf.Tensor, v: tf.Tensor, z: tf.Tensor, params: Params, w: tf.Tensor
) -> tf.Tensor:
    """Lovász-softmax per image, averaged over the classes present in its truth."""
    p = tf.nn.softmax(z, axis=-1) * v[..., None]
    gt = tf.transpose(y, [0, 2, 1])  # [B, K, N]
    errors = tf.abs(gt - tf.transpose(p, [0, 2, 1]))  # 0 on ignored pixels: no share
    order = tf.argsort(errors, axis=2, direction="DESCENDING", stable=True)
    errors_sorted = tf.gather(errors, order, batch_dims=2)
    gt_sorted = tf.gather(gt, order, batch_dims=2)
    gts = tf.reduce_sum(gt_sorted, axis=2, keepdims=True)
    intersection = gts - tf.cumsum(gt_sorted, axis=2)
    union = gts + tf.cumsum(1.0 - gt_sorted, axis=2)
    jaccard = 1.0 - tf.math.divide_no_nan(intersection, union)
    grad = tf.concat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=2)
    per_class = tf.reduce_sum(errors_sorted * tf.stop_gradient(grad), axis=2)
    present = tf.cast(gts[..., 0] > 0, tf.float32)
    return tf.math.divide_no_nan(
        tf.reduce_sum(per_class * present, axis=1), tf.reduce_sum(present, axis=1)
    )


CLASS_LOSSES: dict[str, ClassTermFn] = {
    "ce": ce_classes,
    "dice": dice_classes,
    "focal": focal_classes,
    "tversky": tversky_classes,
    "lovasz": lovasz_classes,
}


def _one_hot(y_true: Any, logits: Any, k: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One-hot truth [B, N, K], counted-pixel mask [B, N], logits [B, N, K] (float32)."""
    logits = tf.cast(logits, tf.float32)
    batch = tf.shape(logits)[0]
    labels = tf.reshape(tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int32), [batch, -1])
    labels = tf.where(labels == IGNORE_INDEX, -1, labels)
    valid = tf.cast((labels >= 0) & (labels < k), tf.float32)
    return tf.one_hot(labels, k, dtype=tf.float32), valid, tf.reshape(logits, [batch, -1, k])


_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def parse_loss_expression(expression: str, classes: int = 1) -> list[tuple[float, str]]:
    """Parse ``"dice+focal"`` or ``"0.5*bce + dice"`` into ``[(weight, name), ...]``.

    Raises:
        UserError: a malformed term (named in the message) or an unknown loss name.

    Example:
        >>> parse_loss_expression("0.5*bce+dice")
        [(0.5, 'bce'), (1.0, 'dice')]
    """
    terms = []
    for raw in expression.split("+"):
        token = raw.strip()
        weight_text, _, name = token.rpartition("*")
        name = name.strip().lower()
        try:
            weight = float(weight_text) if weight_text.strip() else 1.0
        except ValueError:
            weight = math.nan
        if (
            not _NAME.fullmatch(name)
            or not (math.isfinite(weight) and weight > 0)
            or ("*" in token and not weight_text.strip())
        ):
            raise UserError(
                f"bad loss term '{token}' in '{expression}': write NAME or WEIGHT*NAME "
                "with a positive number, joined by '+', e.g. 'dice+focal' or '0.5*bce+dice'"
            )
        known = LOSSES if classes == 1 else CLASS_LOSSES
        if name not in known:
            kind = "loss" if classes == 1 else f"loss for {classes} classes"
            raise unknown_name_error(kind, name, known)
        terms.append((weight, name))
    return terms


@keras.saving.register_keras_serializable(package="segbalance")
class SegmentationLoss(keras.losses.Loss):
    """A weighted sum of the terms in :data:`LOSSES`, computed from logits in float32.

    Args:
        expression: e.g. ``"dice+focal"`` or ``"0.5*bce+dice"``.
        focal_alpha, focal_gamma: focal loss parameters.
        tversky_alpha, tversky_beta: Tversky weights of false positives / negatives.
        smooth: additive smoothing of dice and tversky (empty masks stay finite).
        classes: 1 (binary, sigmoid) or K >= 2 (softmax; ``y_true`` holds class indices).
        class_weights: K weights of the multiclass terms (module doc); None: all 1.
    """

    def __init__(
        self,
        expression: str = "dice+focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
        smooth: float = 1.0,
        classes: int = 1,
        class_weights: Sequence[float] | None = None,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype: Any = "float32",
    ) -> None:
        # tf.name_scope rejects '*' and '+': "0.5*bce+dice" -> "0.5_bce_dice"
        default = re.sub(r"[^A-Za-z0-9_.-]+", "_", expression.strip())
        super().__init__(name=name or default, reduction=reduction, dtype=dtype)
        self.expression = expression
        self.terms = parse_loss_expression(expression, classes)
        self.classes = int(classes)
        if class_weights is not None and len(class_weights) != self.classes:
            raise UserError(f"{len(class_weights)} class weights for {self.classes} classes")
        self.class_weights = None if class_weights is None else [float(x) for x in class_weights]
        self.params: Params = {
            "focal_alpha": float(focal_alpha),
            "focal_gamma": float(focal_gamma),
            "tversky_alpha": float(tversky_alpha),
            "tversky_beta": float(tversky_beta),
            "smooth": float(smooth),
        }

    def call(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        """Per-sample loss [B] from logits ``y_pred``."""
        if self.classes > 1:
            return self._call_classes(y_true, y_pred)
        y, z = _flat(y_true, y_pred)
        total = None
        for weight, name in self.terms:
            value = weight * LOSSES[name](y, z, self.params)
            total = value if total is None else total + value
        return total

    def _call_classes(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        y, v, z = _one_hot(y_true, y_pred, self.classes)
        w = tf.constant(self.class_weights or [1.0] * self.classes, tf.float32)
        total = None
        for weight, name in self.terms:
            value = weight * CLASS_LOSSES[name](y, v, z, self.params, w)
            total = value if total is None else total + value
        return total

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "expression": self.expression, **self.params}
        if self.classes > 1:  # a binary loss keeps the config it always had
            config.update(classes=self.classes, class_weights=self.class_weights)
        return {**config, "dtype": "float32"}


def get_loss(
    cfg: LossConfig, classes: int = 1, class_weights: Sequence[float] | None = None
) -> SegmentationLoss:
    """The loss described by the ``loss`` section of the config.

    ``classes`` is the model's output channels; ``class_weights`` the K weights already
    resolved (:func:`segbalance.classes.resolve_class_weights`).

    Example:
        >>> get_loss(LossConfig(name="dice+focal", focal_gamma=2.0)).terms
        [(1.0, 'dice'), (1.0, 'focal')]
    """
    return SegmentationLoss(
        cfg.name,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
        tversky_alpha=cfg.tversky_alpha,
        tversky_beta=cfg.tversky_beta,
        classes=classes,
        class_weights=class_weights,
    )
