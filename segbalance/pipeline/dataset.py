"""tf.data datasets for training (one epoch of a sampling plan) and for evaluation.

One decode path serves any number of groups: a ``from_tensor_slices`` over the rows the
plan asks for, in the plan's order, one parallel ``map`` (decode, resize, binarise, augment)
with ``deterministic=True``, then ``batch`` and ``prefetch``. Streamed JPEG images at least
twice the training size (the manifest's sizes) decode at 1/2, 1/4 or 1/8 scale
(:func:`segbalance.pipeline.decode.jpeg_ratios`). There is no shuffling here: the
plan is the order, and a sample's augmentation seed is a function of (seed, epoch, position
in the global plan) only, so resumed or sharded runs augment each sample as an
uninterrupted single-device run does.

Elements are dicts, batched::

    {"image": f32[b,H,W,3] 0..255, "mask": f32[b,H,W,1] {0,1}, "group": i32[b],
     "index": i64[b]}  (+ "weight": f32[b] when sample weights are given)

The mask of a multiclass manifest (``Manifest.classes`` set) holds class indices 0..K-1 and
255 for ignored pixels (:mod:`segbalance.pipeline.decode`); augmentation keeps it so.

With ``defer_augment`` (``augment.device: accelerator``) the map only decodes and resizes:
image and mask go out as uint8 with each sample's seed, for the train step to augment
(:mod:`segbalance.pipeline.deferred`).

Example:
    >>> plan = SamplingPlan(train.group_ids, train.groups, seed=0)  # doctest: +SKIP
    >>> positions, indices = plan.shard(epoch, 16, 1, 0)  # doctest: +SKIP
    >>> ds = build_train_dataset(train, indices, positions, image_size=(256, 256),
    ...     batch_size=16, augment=AugmentConfig(), seed=0, epoch=epoch)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from segbalance.classes import ClassSet
from segbalance.config import AugmentConfig
from segbalance.data.check import default_workers
from segbalance.data.manifest import Manifest
from segbalance.errors import UserError
from segbalance.pipeline.augment import build_augmenter
from segbalance.pipeline.cache import DecodedCache
from segbalance.pipeline.decode import decode_pair, jpeg_ratios
from segbalance.pipeline.deferred import SEED, transfer

AUTOTUNE = tf.data.AUTOTUNE
# The loaders' augmentation when the train step augments (defer_augment): none.
_NO_AUGMENT = AugmentConfig(engine="none").model_dump_json()


def sample_seed(seed: int, epoch: int, position: tf.Tensor) -> tf.Tensor:
    """The (2,) int64 augmentation seed of the sample at ``position`` of epoch ``epoch``."""
    base = tf.constant([int(seed), int(epoch)], dtype=tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64))


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # The parallel map already keeps every core busy with whole samples; splitting one
    # sample's ops across the same threads only adds task steals and wake-ups (~5% of the
    # CPU in a profile): 2 cores, streaming 4.90-4.95 -> 4.61-4.71 CPU ms a 384 px image.
    options.threading.max_intra_op_parallelism = 1
    # Its own pool of twice the cores: on the shared default pool a thread that blocks (the
    # batch waiting on the map, a file read) idles its core. Measured on 2 cores, 384 px,
    # default augmentation (benchmarks/bench_pipeline.py): 1.82-1.86 of 2 cores busy with
    # the shared pool, 1.98 with 4 threads; streaming 285 -> 332 images/s, cached 558 ->
    # 616. 3 threads gave less, 6 and 8 no more.
    options.threading.private_threadpool_size = 2 * default_workers()
    # Each replica/worker is handed its own share of the plan: tf.distribute must not
    # shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _check_rows(manifest: Manifest, indices: np.ndarray, what: str) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= len(manifest)):
        bad = int(indices[(indices < 0) | (indices >= len(manifest))][0])
        raise UserError(
            f"{what} holds row {bad}, outside the manifest's {len(manifest)} rows; "
            "build the plan from the same manifest rows that the dataset reads"
        )


def _row_table(manifest: Manifest, indices: np.ndarray) -> dict[str, Any]:
    """The columns the decode map needs, gathered in plan order."""
    images = np.asarray(manifest.image_paths(), dtype=object)
    masks = np.asarray(manifest.mask_paths(), dtype=object)
    rules = np.asarray(manifest.mask_rule, dtype=object)
    return {
        "image_path": images[indices].astype(str) if indices.size else np.zeros(0, str),
        "mask_path": masks[indices].astype(str) if indices.size else np.zeros(0, str),
        # How prepare read each mask's foreground: training reads it the same way.
        "mask_rule": rules[indices].astype(str) if indices.size else np.zeros(0, str),
        "orientation": manifest.orientation[indices].astype(np.int32),
        "group": manifest.group_ids[indices].astype(np.int32),
        "index": indices.astype(np.int64),
    }


def _weights_for(manifest: Manifest, sample_weights: Any, indices: np.ndarray) -> np.ndarray:
    weights = np.asarray(sample_weights, dtype=np.float32).reshape(-1)
    if weights.shape[0] != len(manifest):
        raise UserError(
            f"sample_weights has {weights.shape[0]} values; give one per manifest row "
            f"({len(manifest)})"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise UserError("sample_weights must be finite and >= 0")
    return weights[indices]


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    return (int(image_size[0]), int(image_size[1]))


_LOADER_SIGNATURE = [
    tf.TensorSpec([], tf.string),
    tf.TensorSpec([], tf.string),
    tf.TensorSpec([], tf.string),
    tf.TensorSpec([], tf.int32),
    tf.TensorSpec([], tf.int32),
    tf.TensorSpec([2], tf.int64),
    tf.TensorSpec([], tf.int32),
]


def _num_classes(classes: ClassSet | None) -> int:
    """K of a multiclass manifest, 1 for binary (what the augmenter keeps masks within)."""
    return 1 if classes is None else classes.num_classes


@functools.lru_cache(maxsize=8)
def _sample_loader(
    augment_json: str, groups: tuple[str, ...], size: tuple[int, int], classes_json: str
) -> Any:
    """Decode + augment one sample, as a tf.function traced once and reused by every epoch.

    Seed and epoch reach it as the per-sample key tensor, so the next epoch's dataset calls
    the same traced graph instead of re-building ~1000 ops (seconds on a busy CPU).
    ``classes_json``: the manifest's classes (``ClassSet`` JSON), empty for binary.
    """
    classes = ClassSet.model_validate_json(classes_json) if classes_json else None
    augmenter = build_augmenter(
        AugmentConfig.model_validate_json(augment_json), groups, _num_classes(classes)
    )

    @tf.function(input_signature=_LOADER_SIGNATURE, autograph=False)
    def load(
        image_path: tf.Tensor,
        mask_path: tf.Tensor,
        mask_rule: tf.Tensor,
        orientation: tf.Tensor,
        group: tf.Tensor,
        key: tf.Tensor,
        jpeg_ratio: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        # uint8 pixels: the augmenter's input, as cached rows and the deferred step get them
        image, mask = decode_pair(
            image_path, mask_path, size, mask_rule, orientation, classes, jpeg_ratio, tf.uint8
        )
        if augmenter is not None:
            image, mask = augmenter(image, mask, group, key)
        return image, mask

    return load


_CACHED_SIGNATURE = [
    tf.TensorSpec([], tf.int64),
    tf.TensorSpec([], tf.int32),
    tf.TensorSpec([2], tf.int64),
]


def _cached_loader(
    cache: DecodedCache, augment_json: str, groups: tuple[str, ...], num_classes: int
) -> Any:
    """Like :func:`_sample_loader`, reading decoded rows from ``cache`` instead of files."""
    key = (augment_json, groups, num_classes)
    if key not in cache.loaders:
        augment = AugmentConfig.model_validate_json(augment_json)
        augmenter = build_augmenter(augment, groups, num_classes)

        @tf.function(input_signature=_CACHED_SIGNATURE, autograph=False)
        def load(index: tf.Tensor, group: tf.Tensor, seed: tf.Tensor) -> tuple[Any, Any]:
            image, mask = cache.gather(index)
            if augmenter is not None:
                image, mask = augmenter(image, mask, group, seed)
            return image, mask

        cache.loaders[key] = load
    return cache.loaders[key]


def build_train_dataset(
    manifest: Manifest,
    indices: Sequence[int] | np.ndarray,
    positions: Sequence[int] | np.ndarray,
    *,
    image_size: Sequence[int],
    batch_size: int,
    augment: AugmentConfig,
    seed: int,
    epoch: int,
    sample_weights: Sequence[float] | np.ndarray | None = None,
    cache: DecodedCache | None = None,
    defer_augment: bool = False,
) -> tf.data.Dataset:
    """One epoch (or one replica's share of it) of training batches, in plan order.

    Args:
        manifest: the rows the plan indexes (usually the train split).
        indices: manifest row ids to read, in this order.
        positions: position of each of them in the global epoch plan (augmentation seeds).
        image_size: (height, width) of the model input.
        batch_size: per-replica batch size; the last batch may be smaller.
        augment: the ``augment`` config section (per-group pipelines).
        seed: the run's seed.
        epoch: the epoch number.
        sample_weights: optional weight per manifest row; adds ``"weight"`` to elements.
        cache: decoded rows of ``manifest`` (:class:`DecodedCache`) to read instead of files.
        defer_augment: leave augmentation to the train step: uint8 pixels and a ``"seed"``
            per sample (:mod:`segbalance.pipeline.deferred`).

    Raises:
        UserError: mismatched lengths, rows outside the manifest, bad weights, bad augment
            config.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    if idx.shape != pos.shape:
        raise UserError(f"indices ({idx.size}) and positions ({pos.size}) differ in length")
    _check_rows(manifest, idx, "indices")
    table = _row_table(manifest, idx)
    table["position"] = pos
    # JPEGs >= 2x the training size decode at reduced scale (decode.jpeg_ratios)
    table["jpeg_ratio"] = jpeg_ratios(manifest.height[idx], manifest.width[idx], image_size)
    if sample_weights is not None:
        table["weight"] = _weights_for(manifest, sample_weights, idx)
    size, groups = _size(image_size), tuple(manifest.groups)
    if cache is not None and (cache.size != size or len(cache.images) != len(manifest)):
        raise UserError(
            f"decoded cache holds {len(cache.images)} rows at {cache.size}, but the dataset "
            f"needs {len(manifest)} rows at {size}: build the cache from the same manifest"
        )
    spec = manifest.classes
    augment_json = _NO_AUGMENT if defer_augment else augment.model_dump_json()
    if cache is None:
        classes_json = "" if spec is None else spec.model_dump_json()
        loader = _sample_loader(augment_json, groups, size, classes_json)
    else:
        cached = _cached_loader(cache, augment_json, groups, _num_classes(spec))

    @tf.autograph.experimental.do_not_convert
    def load(row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        key = sample_seed(seed, epoch, row["position"])
        if cache is None:
            image, mask = loader(
                row["image_path"],
                row["mask_path"],
                row["mask_rule"],
                row["orientation"],
                row["group"],
                key,
                row["jpeg_ratio"],
            )
        else:
            image, mask = cached(row["index"], row["group"], key)
        out = {"image": image, "mask": mask, "group": row["group"], "index": row["index"]}
        if defer_augment:  # the train step augments it from this seed
            out["image"], out["mask"] = transfer(image, mask)
            out[SEED] = key
        else:  # unaugmented rows are still uint8
            out["image"] = tf.cast(image, tf.float32)
        if "weight" in row:
            out["weight"] = row["weight"]
        return out

    ds = tf.data.Dataset.from_tensor_slices(table)
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(int(batch_size)).prefetch(AUTOTUNE).with_options(_options())


def release_iterator(box: list[Any]) -> threading.Thread:
    """Drop a spent iterator, held only by ``box``, on a thread of its own (returned).

    Destroying an epoch's iterator sometimes blocks for tens of seconds, idle (measured in
    ``segbalance train``, 888 images at 256 px on 2 CPU cores: 4 epochs of 6 stalled
    24.7-31.6 s, each with 0.2 s of CPU, before the validation pass could start); the
    train loop need not wait for it. ``box`` must hold the only reference, so that the
    destructor runs on that thread. Join the thread before the process ends: TensorFlow
    must not be torn down under a destructor still running.
    """
    thread = threading.Thread(target=box.clear, name="segbalance-release-iterator")
    thread.start()
    return thread


def build_eval_dataset(
    manifest: Manifest, *, image_size: Sequence[int], batch_size: int, cache: bool = False
) -> tf.data.Dataset:
    """Every row of ``manifest`` in row order, decoded and resized, never augmented.

    Args:
        cache: keep the decoded rows in memory after the first pass (the same tensors).
    """
    idx = np.arange(len(manifest), dtype=np.int64)
    size, classes = _size(image_size), manifest.classes

    @tf.autograph.experimental.do_not_convert
    def load(row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image, mask = decode_pair(
            row["image_path"],
            row["mask_path"],
            size,
            row["mask_rule"],
            row["orientation"],
            classes,
        )
        return {"image": image, "mask": mask, "group": row["group"], "index": row["index"]}

    ds = tf.data.Dataset.from_tensor_slices(_row_table(manifest, idx))
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    return ds.batch(int(batch_size)).prefetch(AUTOTUNE).with_options(_options())
