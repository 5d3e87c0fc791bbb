"""Augmentation deferred to the train step (``augment.device: accelerator``).

The input pipeline then only decodes and resizes, and sends each sample as uint8 with its
augmentation seed (:func:`transfer`): a quarter of the host-to-device bytes of float32.
The train step runs :func:`batch_augmenter` on each replica's share of the batch: the
per-sample augmenter of :func:`segbalance.pipeline.augment.build_augmenter`, the same per
sample seeds, the same op chains and ``augment.jit`` compilation as in the pipeline, so both
placements give the same augmented batch.

Pixels: images are rounded to whole grey levels as :class:`~segbalance.pipeline.cache.
DecodedCache` rounds them (less than half a level per pixel). From cached rows (already
uint8) the two placements are identical; when streaming, the deferred batch equals the
pipeline's batch of the same rows read from the cache. Masks ({0, 1}, class indices, 255
ignored) are whole numbers and travel exactly.

Elements of a deferred dataset, batched::

    {"image": u8[b,H,W,3], "mask": u8[b,H,W,1], "group": i32[b], "index": i64[b],
     "seed": i64[b,2]}  (+ "weight": f32[b])

Example:
    >>> augment = batch_augmenter(build_augmenter(cfg.augment, groups))  # doctest: +SKIP
    >>> batch = augment(next(iterator))  # float32 image and mask, augmented  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from segbalance.pipeline.augment import Augmenter

# A batch dict as the pipeline sends it -> the batch the model trains on.
BatchFn = Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]

#: The key of each sample's (2,) int64 augmentation seed in a deferred element.
SEED = "seed"
#: Samples augmented at once inside the step (tf.map_fn's parallel iterations).
PARALLEL = 16


def to_uint8(x: tf.Tensor) -> tf.Tensor:
    """Round to whole values in 0..255, as uint8 (exact for masks and cached rows)."""
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def transfer(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """What the pipeline sends of a decoded, resized, unaugmented pair: both uint8."""
    return to_uint8(image), to_uint8(mask)


def batch_augmenter(augmenter: Augmenter | None) -> BatchFn:
    """The step's side: float32 image and mask, each sample augmented from its seed.

    ``augmenter`` None (nothing to augment) only casts. The seed key is dropped, so the
    result has the keys of a pipeline-augmented batch.
    """

    def apply(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = {k: v for k, v in batch.items() if k != SEED}
        image = tf.cast(batch["image"], tf.float32)
        mask = tf.cast(batch["mask"], tf.float32)
        if augmenter is not None:
            spec = (
                tf.TensorSpec(image.shape[1:], tf.float32),
                tf.TensorSpec(mask.shape[1:], tf.float32),
            )
            image, mask = tf.map_fn(
                lambda x: augmenter(*x),
                (image, mask, tf.cast(batch["group"], tf.int32), batch[SEED]),
                fn_output_signature=spec,
                parallel_iterations=PARALLEL,
            )
        out["image"], out["mask"] = image, mask
        return out

    return apply
