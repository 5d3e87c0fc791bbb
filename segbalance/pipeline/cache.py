"""Decoded rows kept in memory (``data.cache_decoded``), so training skips decoding.

Decoding and resizing is about half of the per-sample cost of the input pipeline on a CPU
and gives the same result every epoch; only augmentation changes. For data sets that fit in
memory (the tutorial's 1105 images take 1105 x 384 x 384 x 4 bytes = 650 MB at 384 px) the
rows are decoded once, through the same decode path as evaluation, and stored as uint8. The
training map then gathers rows by index and augments them as usual.

Cached images are rounded to whole 0..255 values after resizing, so a cached run can differ
from an uncached one by less than half a grey level per pixel; the plan, the seeds and the
masks are identical. Multiclass masks (``Manifest.classes``) are kept as their uint8 class
indices (255 = ignored), binary ones as {0, 1}.

Example:
    >>> cache = DecodedCache.build(train_rows, (256, 256))  # doctest: +SKIP
    >>> ds = build_train_dataset(train_rows, idx, pos, ..., cache=cache)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from segbalance.data.manifest import Manifest
from segbalance.pipeline.decode import decode_pair

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True, eq=False)
class DecodedCache:
    """Every row of one manifest, decoded and resized to ``size``.

    Attributes:
        images: uint8 [N, H, W, 3], RGB.
        masks: uint8 [N, H, W, 1] in {0, 1} (multiclass: class indices, 255 ignored).
        size: (height, width).
        loaders: traced per-sample loaders keyed by augmentation config, kept with the cache
            so every epoch reuses one graph and the memory goes with the cache.
    """

    images: np.ndarray
    masks: np.ndarray
    size: tuple[int, int]
    loaders: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls, manifest: Manifest, image_size: Sequence[int], batch_size: int = 32
    ) -> DecodedCache:
        """Decode every row of ``manifest`` once (parallel, in row order)."""
        size = (int(image_size[0]), int(image_size[1]))
        n = len(manifest)
        images = np.empty((n, *size, 3), np.uint8)
        masks = np.empty((n, *size, 1), np.uint8)
        start = 0
        for image, mask in _decoded_rows(manifest, size, batch_size).as_numpy_iterator():
            stop = start + len(image)
            images[start:stop] = np.clip(np.rint(image), 0, 255)
            # Binary masks are exactly {0, 1} and class indices whole numbers: rint keeps both.
            masks[start:stop] = np.clip(np.rint(mask), 0, 255)
            start = stop
        return cls(images, masks, size)

    @property
    def nbytes(self) -> int:
        """Memory held by the cached pixels."""
        return int(self.images.nbytes + self.masks.nbytes)

    def gather(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Row ``index`` as uint8 image (the augmenter's input) and float32 mask (graph-safe)."""
        image, mask = tf.numpy_function(
            lambda i: (self.images[i], self.masks[i]),
            [index],
            [tf.uint8, tf.uint8],
            stateful=False,
        )
        image.set_shape((*self.size, 3))
        mask.set_shape((*self.size, 1))
        return image, tf.cast(mask, tf.float32)


def _decoded_rows(manifest: Manifest, size: tuple[int, int], batch_size: int) -> tf.data.Dataset:
    """(image, mask) batches of every row in row order, decoded as evaluation decodes them.

    Built here from :func:`decode_pair` rather than through the dataset module, which
    imports this one for the cache it reads.
    """
    paths = (
        np.asarray(manifest.image_paths(), dtype=object).astype(str),
        np.asarray(manifest.mask_paths(), dtype=object).astype(str),
        np.asarray(manifest.mask_rule, dtype=object).astype(str),
        manifest.orientation.astype(np.int32),
    )
    classes = manifest.classes

    @tf.autograph.experimental.do_not_convert
    def load(image_path: Any, mask_path: Any, rule: Any, turn: Any) -> tuple[Any, Any]:
        return decode_pair(image_path, mask_path, size, rule, turn, classes)

    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(int(batch_size)).prefetch(AUTOTUNE)
