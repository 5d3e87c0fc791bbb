"""segbalance.balanced_dataset / steps_per_epoch: plain model.fit on the exact plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import segbalance
from segbalance.augment_ops import get_op
from segbalance.config import load_config
from segbalance.data.manifest import read_manifest
from segbalance.errors import UserError
from segbalance.pipeline.dataset import build_train_dataset
from segbalance.sampling import SamplingPlan
from segbalance.train.plan import training_plan, training_rows
from segbalance.train.run import train

SIZE, BATCH = 32, 4


def _plan(manifest: Path, **overrides: Any) -> SamplingPlan:
    """The plan ``segbalance train`` builds for the same settings."""
    values = {"data.manifest": str(manifest), "train.batch_size": BATCH, **overrides}
    cfg = load_config(None, values)
    return training_plan(cfg, training_rows(cfg, read_manifest(str(manifest))))[0]


class GroupCount(keras.metrics.Metric):
    """Samples of group ``g`` seen this epoch (fit resets metrics at every epoch start)."""

    def __init__(self, g: int, **kwargs: Any) -> None:
        super().__init__(name=f"n{g}", **kwargs)
        self.g = g
        self.n = self.add_variable(shape=(), initializer="zeros", name="n")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        self.n.assign_add(keras.ops.sum(y_true[:, self.g]))

    def result(self) -> Any:
        return self.n

    def reset_state(self) -> None:
        self.n.assign(0.0)


def _counting_model(groups: int) -> keras.Model:
    """Two convs for the mask; the one-hot group passes through, so metrics can count it."""
    image, group = keras.Input((SIZE, SIZE, 3)), keras.Input((groups,))
    x = keras.layers.Rescaling(1 / 255)(image)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    mask = keras.layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    seen = keras.layers.Identity(name="group")(group)
    model = keras.Model([image, group], {"mask": mask, "group": seen})
    model.compile(
        optimizer="adam",
        loss={"mask": "binary_crossentropy", "group": None},
        metrics={"group": [GroupCount(g) for g in range(groups)]},
    )
    return model


@pytest.mark.parametrize("mode", ["exact", "random"])
def test_fit_three_epochs_sees_the_plans_counts(synth_manifest: Path, mode: str) -> None:
    plan = _plan(synth_manifest, **{"sampling.balance": "sqrt", "sampling.mode": mode})
    G = len(plan.group_names)
    ds = segbalance.balanced_dataset(
        synth_manifest,
        image_size=SIZE,
        batch_size=BATCH,
        balance="sqrt",
        mode=mode,
        with_groups=True,
    )

    def for_fit(image: tf.Tensor, mask: tf.Tensor, group: tf.Tensor) -> Any:
        onehot = tf.one_hot(group, G)
        return (image, onehot), {"mask": mask, "group": onehot}

    keras.utils.set_random_seed(0)
    steps = segbalance.steps_per_epoch(synth_manifest, BATCH)
    model = _counting_model(G)
    history = model.fit(
        ds.map(for_fit), epochs=3, steps_per_epoch=steps, shuffle=False, verbose=0
    ).history
    assert steps == plan.steps(BATCH) and steps * BATCH == plan.epoch_length
    per_epoch = [
        {g: int(history[f"group_n{i}"][e]) for i, g in enumerate(plan.group_names)}
        for e in range(3)
    ]
    # fit's epoch e is the plan's epoch e: fit keeps one iterator across its epochs
    assert per_epoch == [plan.counts(e) for e in range(3)]
    if mode == "exact":
        assert per_epoch == [plan.quotas] * 3
        assert len(set(plan.quotas.values())) > 1  # sqrt: a real mix, not one count for all
    else:  # random counts differ from epoch to epoch, so a restart would show
        assert len({tuple(c.values()) for c in per_epoch}) > 1


def test_elements_shapes_dtypes_and_ranges(synth_manifest: Path) -> None:
    kwargs: dict[str, Any] = {"image_size": SIZE, "batch_size": BATCH, "epochs": 1}
    image, mask, group = next(
        iter(segbalance.balanced_dataset(synth_manifest, **kwargs, with_groups=True))
    )
    assert image.shape == (BATCH, SIZE, SIZE, 3) and image.dtype == tf.float32
    assert mask.shape == (BATCH, SIZE, SIZE, 1) and mask.dtype == tf.float32
    assert group.shape == (BATCH,) and group.dtype == tf.int32
    assert float(tf.reduce_min(image)) >= 0.0 and float(tf.reduce_max(image)) <= 255.0
    assert set(np.unique(mask.numpy()).tolist()) <= {0.0, 1.0}
    plain = segbalance.balanced_dataset(synth_manifest, **kwargs, augment="none")
    assert len(plain.element_spec) == 2
    # epochs=1 is exactly one epoch of whole batches
    assert plain.reduce(0, lambda n, _: n + 1).numpy() == segbalance.steps_per_epoch(
        synth_manifest, BATCH
    )


def _epoch(ds: tf.data.Dataset, e: int, steps: int) -> list[np.ndarray]:
    return [t.numpy() for batch in ds.skip(e * steps).take(1) for t in batch]


def _trainers_batch(manifest: Path, epoch: int, seed: int, ops: list[Any]) -> dict[str, Any]:
    """The first batch of ``epoch`` as the trainer's pipeline reads it on one device."""
    values = {"data.manifest": str(manifest), "data.image_size": SIZE, "train.seed": seed}
    cfg = load_config(None, {**values, "train.batch_size": BATCH, "augment.default": ops})
    rows = training_rows(cfg, read_manifest(str(manifest)))
    positions, indices = training_plan(cfg, rows)[0].shard(epoch, BATCH, 1, 0)
    size, augment = (SIZE, SIZE), cfg.augment
    ds = build_train_dataset(
        rows,
        indices,
        positions,
        image_size=size,
        batch_size=BATCH,
        augment=augment,
        seed=seed,
        epoch=epoch,
    )
    return {k: v.numpy() for k, v in next(iter(ds)).items()}


def test_same_seed_same_batches_and_train_reads_the_same(synth_manifest: Path) -> None:
    ops = [{"type": "flip", "p": 0.5}, get_op("brightness")(p=0.5)]
    kwargs: dict[str, Any] = {"image_size": SIZE, "batch_size": BATCH, "augment": ops}
    steps = segbalance.steps_per_epoch(synth_manifest, BATCH)
    a = segbalance.balanced_dataset(synth_manifest, seed=3, with_groups=True, **kwargs)
    b = segbalance.balanced_dataset(synth_manifest, seed=3, with_groups=True, **kwargs)
    other = segbalance.balanced_dataset(synth_manifest, seed=4, with_groups=True, **kwargs)
    first = _epoch(a, 1, steps)
    for x, y in zip(first, _epoch(b, 1, steps), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(
        np.array_equal(x, y) for x, y in zip(first, _epoch(other, 1, steps), strict=True)
    )
    dumped = [{"type": "flip", "p": 0.5}, {"type": "brightness", "p": 0.5}]
    theirs = _trainers_batch(synth_manifest, 1, 3, dumped)
    for x, key in zip(first, ("image", "mask", "group"), strict=True):
        np.testing.assert_array_equal(x, theirs[key])


def _train_error(tmp_path: Path, overrides: dict[str, Any]) -> str:
    cfg = load_config(None, {"data.image_size": SIZE, "train.batch_size": BATCH, **overrides})
    with pytest.raises(UserError) as err:
        train(cfg, tmp_path / "run")
    return str(err.value)


def test_bad_settings_fail_as_train_fails(synth_manifest: Path, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"image_size": SIZE, "batch_size": BATCH}
    with pytest.raises(UserError) as err:
        segbalance.balanced_dataset(synth_manifest, balance="sqrtt", **kwargs)
    with pytest.raises(UserError) as theirs:
        load_config(None, {"sampling.balance": "sqrtt"})  # what train's --balance meets
    assert str(err.value) == str(theirs.value) and "sqrtt" in str(err.value)

    with pytest.raises(UserError) as err:
        segbalance.balanced_dataset(synth_manifest, weights={"nope": 2.0}, **kwargs)
    expected = _train_error(
        tmp_path, {"data.manifest": str(synth_manifest), "sampling.weights": {"nope": 2.0}}
    )
    assert str(err.value) == expected and "nope" in expected

    missing = tmp_path / "absent" / "manifest.csv"
    with pytest.raises(UserError) as err:
        segbalance.balanced_dataset(missing, **kwargs)
    assert str(err.value) == _train_error(tmp_path, {"data.manifest": str(missing)})
    with pytest.raises(UserError, match="does not exist"):
        segbalance.steps_per_epoch(missing, BATCH)

    with pytest.raises(UserError, match="augment.default"):
        segbalance.balanced_dataset(synth_manifest, augment=[{"type": "flipp"}], **kwargs)
    assert not (tmp_path / "run").exists()  # train refused before writing anything
