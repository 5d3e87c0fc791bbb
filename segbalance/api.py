"""The Python API for your own ``model.fit``: a balanced ``tf.data.Dataset``, epoch after epoch.

:func:`balanced_dataset` is the input of ``segbalance train`` for one device, without the
training loop: the rows and the sampling plan come from the builders ``train`` uses
(:func:`segbalance.train.plan.training_rows` and :func:`~segbalance.train.plan.training_plan`
on a :class:`~segbalance.config.Config`), so balance names, weights, defaults and errors are
train's own, and epoch e holds exactly the plan's quotas, in whole batches.

Epochs are made lazily: a Python generator yields epoch e's dataset
(:func:`segbalance.pipeline.dataset.build_train_dataset` over ``plan.shard(e, B, 1, 0)``, as
the trainer reads it on one pipeline) as a dataset *value*, and tf.data flattens them in
order. Decoding and augmentation stay in tf.data's threads; Python only builds the next
epoch's index arrays (closed-form numpy), which a parallel interleave does ahead of time.

A multiclass manifest gives masks of class indices (255 = ignored), as training reads them.
Augmentation always runs here, in the pipeline (``augment.device`` is train's: a user's
``model.fit`` has no step that would augment).

Example:
    >>> ds = balanced_dataset("data/manifest.csv", image_size=256, batch_size=8)  # doctest: +SKIP
    >>> steps = steps_per_epoch("data/manifest.csv", 8)  # doctest: +SKIP
    >>> model.fit(ds, epochs=20, steps_per_epoch=steps)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import tensorflow as tf
from pydantic import BaseModel

from segbalance.config import Config, load_config
from segbalance.data.manifest import Manifest, read_manifest
from segbalance.errors import UserError
from segbalance.pipeline.dataset import build_train_dataset
from segbalance.sampling import SamplingPlan, adaptive_base, training_epoch_length
from segbalance.train.plan import training_plan, training_rows

__all__ = ["balanced_dataset", "steps_per_epoch"]

AugmentSpec = str | Sequence[Mapping[str, Any] | BaseModel]


def _config(
    manifest: str | Path | Manifest,
    overrides: Mapping[str, Any],
    augment: AugmentSpec = "default",
) -> Config:
    """The Config train would load for these settings (its validation and its messages)."""
    values = dict(overrides)
    if not isinstance(manifest, Manifest):
        values["data.manifest"] = str(manifest)
    if isinstance(augment, str):
        values["augment.default"] = augment
    else:  # op models or op dicts, checked op by op as in a config file
        values["augment.default"] = [
            op.model_dump() if isinstance(op, BaseModel) else dict(op) for op in augment
        ]
    return load_config(None, values)


def _train_rows(cfg: Config, manifest: str | Path | Manifest) -> Manifest:
    """The train split (``training_rows``), refused when empty as ``train`` refuses it."""
    source = manifest if isinstance(manifest, Manifest) else read_manifest(str(manifest))
    rows = training_rows(cfg, source)
    if len(rows) == 0:
        raise UserError(
            f"manifest {cfg.data.manifest or '(given as a Manifest)'} has no "
            f"'{cfg.data.train_split}' rows; run 'segbalance prepare', or give a Manifest "
            "whose rows have that split"
        )
    return rows


def steps_per_epoch(
    manifest: str | Path | Manifest, batch_size: int, *, epoch_length: int | None = None
) -> int:
    """Batches in one epoch of :func:`balanced_dataset`: ``ceil((epoch_length or rows) / B)``.

    Example:
        >>> steps_per_epoch("data/manifest.csv", 16)  # 1105 train images  # doctest: +SKIP
        70
    """
    cfg = _config(manifest, {"train.batch_size": batch_size, "data.epoch_length": epoch_length})
    rows = _train_rows(cfg, manifest)
    return training_epoch_length(len(rows), epoch_length, batch_size) // batch_size


def _to_tuple(with_groups: bool) -> Any:
    @tf.autograph.experimental.do_not_convert
    def to_tuple(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
        if with_groups:
            return batch["image"], batch["mask"], batch["group"]
        return batch["image"], batch["mask"]

    return to_tuple


def _epoch_datasets(
    cfg: Config, rows: Manifest, plan: SamplingPlan, epochs: int | None
) -> Iterator[tf.data.Dataset]:
    """Epoch 0, 1, ... (forever when ``epochs`` is None) as train reads them on one device."""
    batch = cfg.train.batch_size
    for epoch in range(epochs) if epochs is not None else itertools.count():
        positions, indices = plan.shard(epoch, batch, 1, 0)
        yield build_train_dataset(
            rows,
            indices,
            positions,
            image_size=cfg.data.image_size,
            batch_size=batch,
            augment=cfg.augment,
            seed=cfg.train.seed,
            epoch=epoch,
        )


def balanced_dataset(
    manifest: str | Path | Manifest,
    *,
    image_size: int | tuple[int, int],
    batch_size: int,
    balance: str = "uniform",
    mode: Literal["exact", "random"] = "exact",
    seed: int = 0,
    augment: AugmentSpec = "default",
    epochs: int | None = None,
    with_groups: bool = False,
    weights: Mapping[str, float] | None = None,
    epoch_length: int | None = None,
) -> tf.data.Dataset:
    """Group-balanced ``(image, mask)`` batches of the train split, epoch after epoch.

    Images are float32 RGB 0..255 ``[B, H, W, 3]``, masks float32 {0, 1} ``[B, H, W, 1]``
    (a multiclass manifest, from ``prepare --classes``: class indices 0..K-1 in the
    classes file's order and 255 for ignored pixels, also where augmentation opened a
    border; train a K-channel model with e.g. ``SegmentationLoss("ce+dice", classes=K)``,
    which skips them, and ``Manifest.classes`` names them); with ``with_groups`` a third
    element, the int32 group index of each sample (its name is
    ``Manifest.groups[i]``). Every epoch is :func:`steps_per_epoch` whole batches holding
    exactly the plan's per-group quotas (``mode="exact"``), in the plan's order, augmented
    as ``segbalance train`` augments them; the same arguments give the same batches.

    Args:
        manifest: a manifest CSV (from ``segbalance prepare``) or a :class:`Manifest`.
        image_size: model input side, or (height, width); multiples of 32.
        batch_size: samples per batch.
        balance: strategy (``uniform``, ``proportional``, ``sqrt``, ``power:A``, ``custom``,
            ``repeat-factor:T``), as ``--balance``.
        mode: ``exact`` (fixed quotas per epoch) or ``random`` (independent draws).
        seed: fixes the plan and the augmentation.
        augment: ``"default"``, ``"none"``, or a list of ops (dicts such as
            ``{"type": "flip", "p": 0.5}`` or :mod:`segbalance.augment_ops` models).
        epochs: epochs to produce; None: forever (give ``model.fit`` ``steps_per_epoch``).
        with_groups: add the group index as a third element.
        weights: per-group multipliers by group name, as ``--weights``.
        epoch_length: samples per epoch; default: the number of train images.

    Raises:
        UserError: what ``segbalance train`` raises for the same data and settings; an
            ``adaptive[:BASE]`` balance (its mix follows each epoch's validation losses,
            which a user's ``model.fit`` cannot feed back: train with ``segbalance train``).
    """
    if adaptive_base(balance) is not None:
        raise UserError(
            f"balance '{balance}': balanced_dataset cannot adapt, since model.fit does not "
            "give it the per-group losses of each epoch; use a static strategy (its base, "
            "e.g. 'uniform' or 'sqrt') here, or train with 'segbalance train --balance "
            f"{balance}'"
        )
    overrides = {
        "data.image_size": image_size,
        "data.epoch_length": epoch_length,
        "sampling.balance": balance,
        "sampling.mode": mode,
        "sampling.weights": dict(weights) if weights is not None else None,
        "train.batch_size": batch_size,
        "train.seed": seed,
        "train.epochs": epochs,  # checked as train checks it; None: forever
    }
    cfg = _config(manifest, overrides, augment)
    rows = _train_rows(cfg, manifest)
    plan, _ = training_plan(cfg, rows)  # no sample_weights: the API balances by sampling
    first = next(_epoch_datasets(cfg, rows, plan, 1))  # bad settings fail here, not in fit
    epoch_ds = tf.data.Dataset.from_generator(
        lambda: _epoch_datasets(cfg, rows, plan, epochs),
        output_signature=tf.data.DatasetSpec(first.element_spec),
    )
    # Two epochs open, taken a whole epoch at a time: the next epoch's iterator exists (and
    # fills its own small prefetch buffer) before this one ends, so fit does not wait at the
    # boundary, and the order is kept. Sequential, not parallel: a parallel interleave ran
    # the next epochs' pipelines ahead without bound (at 256 px, 888 images: ~3 epochs
    # decoded at once, 7.6 s an epoch instead of 2.0, and 17 s to tear down at the end).
    steps = plan.steps(cfg.train.batch_size)
    ds = epoch_ds.interleave(lambda d: d, cycle_length=2, block_length=steps)
    return ds.map(_to_tuple(with_groups)).prefetch(tf.data.AUTOTUNE)
