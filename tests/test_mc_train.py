"""Multiclass training: label masks through the pipeline, the K-class run end to end
(history, TensorBoard, metrics.json, the model file), its checks, and binary unchanged.

The data: 32 px images with a red square (nail) and a green bar (skin) on gray noise; label
masks hold the class *values* 0, 100, 200 with a stripe of the ignore value 255, and one
validation mask is a colour mask (read by colour). The manifest is written here with
``write_manifest`` (no ``prepare --classes`` needed).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.classes import IGNORE_INDEX, ClassSet
from segbalance.config import Config, load_config
from segbalance.data.manifest import Manifest, read_manifest, write_manifest
from segbalance.errors import UserError
from segbalance.label_masks import read_label_mask
from segbalance.metrics import GroupMetrics
from segbalance.train import logs as runlog

SIZE = 32
SPEC = ClassSet.model_validate(
    {
        "classes": [
            {"name": "background", "value": 0},
            {"name": "nail", "value": 100, "color": [255, 0, 0]},
            {"name": "skin", "value": 200, "color": [0, 255, 0]},
        ],
        "ignore": 255,
    }
)
NAMES = SPEC.names
GROUPS = ["a", "b"]
# (name, group, split, colour mask?); skin is in every b image and in t0, t3 and v1 of a
ROWS = [
    *[(f"t{i}", "a" if i < 6 else "b", "train", False) for i in range(8)],
    ("v0", "a", "valid", False),
    ("v1", "a", "valid", False),
    ("v2", "b", "valid", False),
    ("v3", "b", "valid", True),
]


def _labels(rng: np.random.Generator, colour: bool, skin: bool) -> np.ndarray:
    """uint8 [H, W] class indices: a nail square, a skin bar, an ignored stripe."""
    labels = np.zeros((SIZE, SIZE), np.uint8)
    y, x = rng.integers(2, SIZE - 12, 2)
    labels[y : y + 10, x + 8 : x + 18] = 1
    if skin:
        labels[:, : rng.integers(3, 8)] = 2
    if not colour:  # a colour mask of this classes file has no ignore colour
        labels[-2:] = IGNORE_INDEX
    return labels


def write_data(root: Path) -> Path:
    """Images, label masks (values or colours) and the 3-class manifest; its path."""
    rng = np.random.default_rng(0)
    tint = np.array([[90, 90, 90], [230, 40, 40], [40, 200, 40], [90, 90, 90]], np.float32)
    cols: dict[str, list[Any]] = {k: [] for k in ("image", "mask", "group", "split")}
    rules, cover = [], []
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, group, split, colour in ROWS:
        skin = group == "b" or name in ("t0", "t3", "v1")
        labels = _labels(rng, colour, skin)
        index = np.where(labels == IGNORE_INDEX, 3, labels)
        image = tint[index] + rng.normal(0, 12, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"images/{name}.png")
        if colour:
            mask = SPEC.palette()[labels]  # background black, nail red, skin green
        else:
            mask = np.array([*SPEC.values, 0], np.uint8)[index]
            mask[labels == IGNORE_INDEX] = 255
        Image.fromarray(mask.astype(np.uint8)).save(root / f"masks/{name}.png")
        for key, value in zip(
            cols, (f"images/{name}.png", f"masks/{name}.png", group, split), strict=True
        ):
            cols[key].append(value)
        rules.append("class-color" if colour else "class-value")
        counted = labels[labels != IGNORE_INDEX]
        cover.append([float(np.mean(counted == k)) for k in range(3)])
    n = len(ROWS)
    manifest = Manifest(
        root=root,
        height=[SIZE] * n,
        width=[SIZE] * n,
        coverage=[1 - c[0] for c in cover],
        mask_rule=tuple(rules),
        classes=SPEC,
        class_coverage=np.array(cover),
        **cols,
    )
    return write_manifest(manifest, root / "segbalance" / "manifest.csv")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("mc_train"))


def tiny_config(manifest: Path, **extra: Any) -> Config:
    overrides = {
        "data.manifest": str(manifest),
        "data.image_size": SIZE,
        "data.epoch_length": 8,
        "model.name": "unet-small",
        "model.encoder_weights": "none",
        "model.decoder_filters": [16, 8, 8, 8, 8],
        "loss.name": "ce+dice",
        "loss.class_weights": "auto",
        "train.batch_size": 2,
        "train.epochs": 1,
        "train.precision": "float32",
        **extra,
    }
    return load_config(None, overrides)


def true_labels(manifest: Manifest, i: int) -> np.ndarray:
    """Class indices of row i read by hand (values or colours), not by segbalance."""
    arr = np.asarray(Image.open(manifest.root / manifest.mask[i]))
    out = np.full(arr.shape[:2], IGNORE_INDEX, np.uint8)
    if manifest.mask_rule[i] == "class-color":
        for k, rgb in enumerate(SPEC.palette()):
            out[(arr == rgb).all(axis=-1)] = k
    else:
        for k, value in enumerate(SPEC.values):
            out[arr == value] = k
    return out


# --------------------------------------------------------------------------- pipeline
def test_label_masks_decode_to_class_indices(manifest: Path) -> None:
    from segbalance.pipeline.cache import DecodedCache
    from segbalance.pipeline.dataset import build_eval_dataset

    rows = read_manifest(manifest)
    assert rows.classes == SPEC
    masks = np.concatenate(
        [b["mask"].numpy() for b in build_eval_dataset(rows, image_size=(SIZE, SIZE), batch_size=4)]
    )
    assert masks.dtype == np.float32 and masks.shape == (len(ROWS), SIZE, SIZE, 1)
    for i in range(len(ROWS)):
        np.testing.assert_array_equal(masks[i, ..., 0], true_labels(rows, i))
        reader = read_label_mask(rows.root / rows.mask[i], SPEC, rows.mask_rule[i])
        np.testing.assert_array_equal(masks[i, ..., 0], reader)
    assert IGNORE_INDEX in masks and set(np.unique(masks)) == {0, 1, 2, IGNORE_INDEX}
    cache = DecodedCache.build(rows, (SIZE, SIZE))
    np.testing.assert_array_equal(cache.masks.astype(np.float32), masks)
    # Resized to another size: nearest neighbour, still class indices only.
    half = next(iter(build_eval_dataset(rows, image_size=(16, 16), batch_size=12)))["mask"].numpy()
    assert set(np.unique(half)) <= {0, 1, 2, IGNORE_INDEX}


def test_balanced_dataset_gives_class_index_masks(manifest: Path) -> None:
    from segbalance.api import balanced_dataset

    rotate = [{"type": "rotate", "degrees": 90, "fill_mode": "constant"}]
    ds = balanced_dataset(manifest, image_size=SIZE, batch_size=4, epochs=1, augment=rotate)
    masks = np.concatenate([m.numpy() for _, m in ds])
    assert len(masks) == 8 and set(np.unique(masks)) <= {0, 1, 2, IGNORE_INDEX}
    assert {1, 2} <= set(np.unique(masks))


def test_undecodable_label_mask_is_named(manifest: Path, tmp_path: Path) -> None:
    from segbalance.pipeline.verify import undecodable

    rows = read_manifest(manifest)
    assert undecodable(rows, range(len(rows))) == []
    broken = rows.take([0])
    (tmp_path / "masks").mkdir()
    (tmp_path / "images").mkdir()
    Image.open(rows.root / rows.image[0]).save(tmp_path / rows.image[0])
    (tmp_path / rows.mask[0]).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    moved = Manifest(**{**broken.__dict__, "root": tmp_path})
    (problem,) = undecodable(moved, [0])
    assert rows.mask[0] in problem.file and "cannot read the label mask" in problem.problem


def test_plan_shows_what_balancing_does_to_each_class(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segbalance.cli import main

    def plan(*argv: str) -> dict[str, Any]:
        assert main(["plan", str(manifest), "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)["classes"]

    uniform = plan("--balance", "uniform")
    skin = uniform["classes"]["skin"]
    assert skin["images"] == 4 and skin["images_by_group"] == {"a": 2, "b": 2}
    # 4 samples of a (2 of its 6 images have skin) + 4 of b (all have skin)
    assert skin["samples_per_epoch"] == pytest.approx(4 * 2 / 6 + 4)
    assert uniform["weights"] is None and skin["weight"] is None
    proportional = plan("--balance", "proportional")["classes"]["skin"]
    assert proportional["samples_per_epoch"] == pytest.approx(6 * 2 / 6 + 2)
    config = tmp_path / "run.yaml"
    config.write_text("loss:\n  class_weights: auto\n")
    auto = plan("--config", str(config))
    assert auto["weights"] == "auto" and auto["classes"]["skin"]["weight"] > 1
    assert main(["plan", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "pixel share" in out and "skin" in out


# --------------------------------------------------------------------------- checks
def test_task_checks(manifest: Path, tmp_path: Path) -> None:
    from segbalance.train import train
    from segbalance.train.task import resolve_task, task_config

    rows = read_manifest(manifest).select(split="train")
    task = resolve_task(tiny_config(manifest), rows)
    assert task.num_classes == 3 and task.class_names == NAMES
    assert task.counts_shape == (3, 4) and task.class_weights is not None
    assert len(task.class_weights) == 3 and np.mean(task.class_weights) == pytest.approx(1.0)
    # skin and nail are rarer than the background: they weigh more
    assert task.class_weights[0] < min(task.class_weights[1:])
    assert task_config(tiny_config(manifest), task).model.classes == 3
    assert "class weights (auto)" in task.describe()[0]
    assert resolve_task(tiny_config(manifest, **{"model.classes": 3}), rows).num_classes == 3
    with pytest.raises(UserError, match=r"model.classes is 5.*3 classes"):
        resolve_task(tiny_config(manifest, **{"model.classes": 5}), rows)
    with pytest.raises(UserError, match="bce"):
        resolve_task(tiny_config(manifest, **{"loss.name": "bce"}), rows)
    with pytest.raises(UserError, match="unknown class"):
        resolve_task(tiny_config(manifest, **{"loss.class_weights": {"nails": 2.0}}), rows)
    binary = Manifest(**{**rows.__dict__, "classes": None, "class_coverage": None})
    with pytest.raises(UserError, match="class_weights"):
        resolve_task(tiny_config(manifest), binary)
    with pytest.raises(UserError, match="model.classes is 3.*no classes"):
        resolve_task(tiny_config(manifest, **{"model.classes": 3}), binary)
    # refused before the work dir is written
    with pytest.raises(UserError, match="model.classes is 5"):
        train(tiny_config(manifest, **{"model.classes": 5}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_binary_history_header_is_unchanged() -> None:
    assert runlog.history_columns(["0", "1"]) == [
        "epoch",
        "loss",
        "iou",
        "val_loss",
        "val_iou",
        "val_dice",
        "mean_group_iou",
        "worst_group_iou",
        "worst_group",
        "lr",
        "seconds",
        "images_per_s",
        "iou_0",
        "iou_1",
        "dice_0",
        "dice_1",
    ]
    assert runlog.history_columns(["0"], adaptive=True)[-2:] == ["weight_0", "val_loss_0"]
    columns = runlog.history_columns(["0"], classes=NAMES)
    assert columns[-3:] == ["class_iou_background", "class_iou_nail", "class_iou_skin"]


def test_validate_sums_per_class_counts() -> None:
    from segbalance.train import steps

    counts = np.zeros((2, 3, 4))
    counts[0] = [[10, 0, 0, 5], [3, 1, 0, 11], [0, 0, 0, 15]]  # skin absent in group a
    counts[1] = [[8, 2, 0, 5], [1, 0, 1, 13], [2, 2, 0, 11]]

    def step(batch: Any) -> tuple[tf.Tensor, ...]:
        return tf.constant(counts), tf.constant([1.0, 1.0]), tf.constant(0.5), tf.zeros(2)

    val = steps.validate(step, iter([None]), 1, GROUPS, NAMES)
    ref = GroupMetrics(GROUPS, NAMES)
    ref.add_totals(counts, [1, 1])
    expected = ref.result()
    assert val["groups"] == expected["groups"] and val["classes"] == expected["classes"]
    assert val["groups"]["a"]["iou"] == pytest.approx(0.75)  # nail only: skin is absent
    assert val["class_iou_nail"] == pytest.approx(4 / 6)
    assert val["val_iou"] == pytest.approx(expected["overall_iou"])
    assert val["worst_group"] == "b"


def test_precision_probe_times_a_k_class_model(manifest: Path) -> None:
    from segbalance.train import steps
    from segbalance.train.task import resolve_task, task_config

    cfg = tiny_config(manifest)
    cfg = task_config(cfg, resolve_task(cfg, read_manifest(manifest).select(split="train")))
    seconds = steps.time_train_steps(cfg, ["float32"], 2, steps=1, warmup=1)
    assert seconds["float32"] > 0
    keras.mixed_precision.set_global_policy("float32")


def test_label_panels_colour_classes() -> None:
    from segbalance.train.images import IGNORED, label_panels

    image = np.full((2, 2, 3), 7.0, np.float32)
    truth = np.array([[0, 1], [2, IGNORE_INDEX]])
    pred = np.array([[1, 1], [0, 2]])
    out = label_panels(image, pred, truth, SPEC.palette())
    assert out.shape == (2, 6, 3) and out.dtype == np.uint8
    assert (out[:, :2] == 7).all()
    np.testing.assert_array_equal(out[1, 3], IGNORED)
    np.testing.assert_array_equal(out[0, 3], [255, 0, 0])  # true nail in its colour
    np.testing.assert_array_equal(out[1, 5], [0, 255, 0])  # predicted skin


# --------------------------------------------------------------------------- end to end
class Killed(Exception):
    pass


class KillAt(keras.callbacks.Callback):
    """Dies before step ``step`` of epoch ``epoch`` (as a killed process would)."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__()
        self.at, self.epoch = (epoch, step), -1

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if (self.epoch, batch) == self.at:
            raise Killed


def _events(logdir: Path) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = {}
    for path in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return out


def _hand_counts(model: Any, rows: Manifest) -> np.ndarray:
    """[N, K, 4] counts of the model's argmax against the masks read by hand."""
    images = np.stack([np.asarray(Image.open(rows.root / p), np.float32) for p in rows.image])
    pred = np.asarray(model(images, training=False)).argmax(axis=-1)
    out = np.zeros((len(rows), 3, 4))
    for i in range(len(rows)):
        truth = true_labels(rows, i)
        counted = truth != IGNORE_INDEX
        for k in range(3):
            p, t = (pred[i] == k) & counted, (truth == k) & counted
            out[i, k] = [(p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (counted & ~p & ~t).sum()]
    return out


@pytest.mark.heavy
def test_three_class_run_end_to_end_with_resume(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segbalance.artifacts import load_model
    from segbalance.evaluate import evaluate
    from segbalance.train import train

    cfg = tiny_config(manifest, **{"train.checkpoint_every_steps": 2})
    work = tmp_path / "run"
    with pytest.raises(Killed):  # killed in step 4 of 4: resumes from its step-2 checkpoint
        train(cfg, work, callbacks=[KillAt(0, 3)])
    assert "class weights (auto): background" in capsys.readouterr().out
    result = train(cfg, work, resume=True)  # the [K, 4] running counts come back too
    assert "(epoch 1 step 2)" in capsys.readouterr().out
    assert result.epochs_completed == 1

    with (work / "history.csv").open() as fh:
        assert next(csv.reader(fh)) == runlog.history_columns(GROUPS, classes=NAMES)
    rows = runlog.read_history(work / "history.csv")
    assert [r["epoch"] for r in rows] == [1]
    assert all(math.isfinite(r["loss"]) and 0 <= r["iou"] <= 1 for r in rows)

    model, meta = load_model(work / "best.keras")
    assert meta.classes == SPEC.to_json() and meta.class_set == SPEC
    assert model.output_shape == (None, SIZE, SIZE, 3)
    assert meta.config["model"]["classes"] == 3
    assert load_config(work / "config.yaml") == cfg  # as given: a resume compares like that

    # Validation numbers of the best epoch equal GroupMetrics on counts counted by hand.
    best = rows[result.best_epoch - 1]
    valid = read_manifest(manifest).select(split="valid")
    acc = GroupMetrics(GROUPS, NAMES)
    acc.update(valid.group_ids, _hand_counts(model, valid))
    expected = acc.result()
    for c in NAMES:
        iou = expected["classes"][c]["iou"]
        assert (iou is None and math.isnan(best[f"class_iou_{c}"])) or best[
            f"class_iou_{c}"
        ] == pytest.approx(iou, abs=1e-5)
    for g in GROUPS:
        assert best[f"iou_{g}"] == pytest.approx(expected["groups"][g]["iou"], abs=1e-5)
    assert best["val_iou"] == pytest.approx(expected["overall_iou"], abs=1e-5)
    assert best["mean_group_iou"] == pytest.approx(expected["mean_group_iou"], abs=1e-5)
    # evaluate on the same split agrees with the run's validation
    report = evaluate(work / "best.keras", manifest, split="valid", bootstrap=0)
    assert report["classes"] == expected["classes"]
    assert report["mean_group_iou"] == pytest.approx(best["mean_group_iou"], abs=1e-5)

    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["classes"] == NAMES and set(metrics["best"]["classes"]) == set(NAMES)

    events = _events(work / "logs")
    for c in NAMES:
        assert f"class_iou/{c}" in events or expected["classes"][c]["iou"] is None
    assert any(tag.startswith("group_class_iou/a/") for tag in events)
    panel = events["group_images/a"][1]  # [width, height, png, ...]: three panels wide
    assert panel[0] == str(3 * SIZE).encode() and panel[1] == str(SIZE).encode()


def test_summary_line_shows_each_class() -> None:
    row = {
        "epoch": 1,
        "loss": 1.0,
        "val_loss": 1.0,
        "val_iou": 0.5,
        "mean_group_iou": 0.5,
        "worst_group_iou": 0.4,
        "worst_group": "a",
        "lr": 1e-3,
        "seconds": 2.0,
        "images_per_s": 3.0,
    }
    assert "  iou " not in runlog.summary_line(row, 2, "mean_group_iou", False)
    row.update(class_iou_background=0.9, class_iou_nail=float("nan"))
    line = runlog.summary_line(row, 2, "mean_group_iou", False)
    assert "iou background 0.9000 nail -" in line
