"""Augmentation deferred to the train step (``augment.device: accelerator``).

The input pipeline then only decodes and resizes, and sends each sample as uint8 with its
augmentation seed (:func:`transfer`): a quarter of the host-to-device bytes of float32.
The train step runs :func:`batch_augmenter` on each replica's share of the batch: the
per-sample augmenter of :func:`segbalance.pipeline.augment.build_augmenter`, the same per
sample seeds, the same op chains and ``augment.jit`` compilation as in the pipeline, so both
placements give the same augmented batch.

Pixels: the augmenter starts from uint8 images in both placements: decoded rows (8-bit
files as they are; 16-bit, TIFF and resized ones rounded, as :class:`~segbalance.pipeline.
cache.DecodedCache` rounds them) or cached rows. So the two placements give the same batch,
streamed or cached. Masks ({0, 1}, class indices, 255 ignored) are whole numbers and travel
exactly.

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
from segbalance.pipeline.decode import to_uint8

# A batch dict as the pipeline sends it -> the batch the model trains on.
BatchFn = Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]

#: The key of each sample's (2,) int64 augmentation seed in a deferred element.
SEED = "seed"
#: Samples augmented at once inside the step (tf.map_fn's parallel iterations).
PARALLEL = 16


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
        image, mask = batch["image"], tf.cast(batch["mask"], tf.float32)
        if augmenter is None:
            image = tf.cast(image, tf.float32)
        else:  # uint8 pixels in, as the pipeline's augmenter gets them
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
