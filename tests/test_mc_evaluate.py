"""Multiclass evaluate: per-class IoU by hand, the absent-class rule, ignored pixels, MeanIoU.

The model here is not trained: a 1x1 convolution whose logits are the pixel's colour
channels, so a pixel's predicted class is its brightest channel (red = background, green =
nail, blue = skin) and every prediction can be counted by hand. Images are at the model's
size (32 px), so no resize blurs a row boundary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbalance.artifacts import ModelMeta, save_model
from segbalance.classes import ClassSet
from segbalance.cli import main
from segbalance.data.manifest import Manifest, write_manifest
from segbalance.errors import UserError

SIZE = 32
ROW = SIZE  # pixels per row
# background 0, nail 100, skin 200: values differ from indices, as in real label masks
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
COLOUR = {0: (200, 0, 0), 1: (0, 200, 0), 2: (0, 0, 200)}  # predicted class -> image pixel
IGNORED = -1


def rows(*spans: tuple[int, int, int]) -> np.ndarray:
    """int [32] class index per image row from (first, last, class) spans."""
    out = np.full(SIZE, -9)
    for first, last, k in spans:
        out[first : last + 1] = k
    assert (out != -9).all()
    return out


# Each image: (group, predicted class per row, true class per row; -1 = ignore value)
IMAGES = {
    "a1": ("a", rows((0, 15, 1), (16, 31, 0)), rows((0, 11, 1), (12, 27, 0), (28, 31, IGNORED))),
    "a2": ("a", rows((0, 7, 2), (8, 31, 0)), rows((0, 3, 2), (4, 7, 1), (8, 31, 0))),
    "b1": ("b", rows((0, 15, 1), (16, 31, 0)), rows((0, 7, 1), (8, 31, 0))),  # no skin at all
}


def colour_model(path: Path, spec: ClassSet = SPEC, groups: tuple[str, ...] = ("a", "b")) -> Path:
    """A model whose class logits are 0.05 x (red, green, blue): argmax = brightest channel."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    head = keras.layers.Conv2D(3, 1, name="logits")
    model = keras.Model(inputs, head(inputs))
    head.set_weights([np.eye(3, dtype=np.float32)[None, None] * 0.05, np.zeros(3, np.float32)])
    meta = ModelMeta(image_size=(SIZE, SIZE), groups=list(groups), classes=spec.to_json())
    return save_model(model, path, meta)


def write_data(root: Path, spec: ClassSet = SPEC) -> Path:
    """The IMAGES as files and a 3-class manifest (label masks hold the class values)."""
    values = np.array([*spec.values, spec.ignore or 255])  # index -1 -> the ignore value
    cols: dict[str, list] = {k: [] for k in ("image", "mask", "group", "split")}
    cover = []
    for name, (group, pred, truth) in IMAGES.items():
        image = np.array([COLOUR[k] for k in pred], np.uint8)[:, None].repeat(SIZE, 1)
        mask = values[truth].astype(np.uint8)[:, None].repeat(SIZE, 1)
        for sub, arr in (("images", image), ("masks", mask)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / sub / f"{name}.png")
        row = (f"images/{name}.png", f"masks/{name}.png", group, "valid")
        for key, value in zip(cols, row, strict=True):
            cols[key].append(value)
        counted = truth[truth >= 0]
        cover.append([np.mean(counted == k) for k in range(3)])
    n = len(IMAGES)
    manifest = Manifest(
        root=root,
        height=[SIZE] * n,
        width=[SIZE] * n,
        coverage=[1 - c[0] for c in cover],
        mask_rule=("class-value",) * n,
        classes=spec,
        class_coverage=np.array(cover),
        **cols,
    )
    return write_manifest(manifest, root / "segbalance" / "manifest.csv")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mc_eval")
    return colour_model(root / "model.keras"), write_data(root / "data")


def test_per_class_iou_equals_hand_counts(case) -> None:
    from segbalance.evaluate import evaluate

    model, csv = case
    result = evaluate(model, csv, bootstrap=0, batch_size=2)
    a, b = result["groups"]["a"], result["groups"]["b"]
    # group a, summed over a1 and a2 (rows x 32 px; a1's rows 28-31 are ignored, count nowhere):
    #   background tp (12 + 24) rows, fn 4 rows (a1 12-15: predicted nail) -> 36 / 40
    #   nail tp 12, fp 4 (a1 12-15), fn 4 (a2 4-7: predicted skin)          -> 12 / 20
    #   skin tp 4, fp 4 (a2 4-7)                                            ->  4 / 8
    assert a["classes"]["background"]["iou"] == pytest.approx(36 / 40)
    assert a["classes"]["nail"] == pytest.approx(
        {"iou": 12 / 20, "dice": 24 / 32, "precision": 12 / 16, "recall": 12 / 16}
    )
    assert a["classes"]["skin"] == pytest.approx(
        {"iou": 4 / 8, "dice": 8 / 12, "precision": 4 / 8, "recall": 1.0}
    )
    assert a["iou"] == pytest.approx((12 / 20 + 4 / 8) / 2)  # background excluded
    assert a["dice"] == pytest.approx((24 / 32 + 8 / 12) / 2)
    # group b: nail tp 8, fp 8 rows -> 0.5; skin neither true nor predicted: absent,
    # null and left out of b's mean (not 0, which would give 0.25, nor 1, giving 0.75)
    assert b["classes"]["skin"] == {"iou": None, "dice": None, "precision": None, "recall": None}
    assert b["classes"]["nail"]["iou"] == pytest.approx(8 / 16)
    assert b["iou"] == pytest.approx(0.5)
    assert (a["images"], b["images"]) == (2, 1)
    assert result["mean_group_iou"] == pytest.approx((0.55 + 0.5) / 2)
    assert result["worst_group_iou"] == pytest.approx(0.5)
    # all pixels: nail tp 20, fp 12, fn 4 rows; skin tp 4, fp 4 rows
    every = result["classes"]
    assert every["nail"]["iou"] == pytest.approx(20 / 36)
    assert every["skin"]["iou"] == pytest.approx(4 / 8)
    assert every["background"]["iou"] == pytest.approx(52 / 64)
    assert result["overall_iou"] == pytest.approx((20 / 36 + 4 / 8) / 2)


def test_overall_iou_agrees_with_keras_iou_metrics(case) -> None:
    """keras.metrics on the same predictions, pixels of the ignore value excluded.

    ``overall_iou`` is the mean over the foreground classes (keras ``IoU`` with
    ``target_class_ids=[1, 2]``); the all-pixel per-class IoUs averaged with the background
    included are keras ``MeanIoU``.
    """
    import keras

    from segbalance.evaluate import evaluate

    model, csv = case
    result = evaluate(model, csv, bootstrap=0)
    truth = np.concatenate([t for _, _, t in IMAGES.values()]).repeat(ROW)
    pred = np.concatenate([p for _, p, _ in IMAGES.values()]).repeat(ROW)
    truth = np.where(truth < 0, 255, truth)
    fg = keras.metrics.IoU(num_classes=3, target_class_ids=[1, 2], ignore_class=255)
    fg.update_state(truth, pred)
    assert result["overall_iou"] == pytest.approx(float(fg.result()), abs=1e-6)
    every = keras.metrics.MeanIoU(num_classes=3, ignore_class=255)
    every.update_state(truth, pred)
    ours = np.mean([c["iou"] for c in result["classes"].values()])
    assert ours == pytest.approx(float(every.result()), abs=1e-6)


def test_bootstrap_resamples_images_and_takes_the_fg_mean(case) -> None:
    from segbalance.evaluate import evaluate

    model, csv = case
    result = evaluate(model, csv, bootstrap=200, seed=1)
    # group a's two images resampled: (a1, a1) 0.75 (skin absent), (a2, a2) 0.25
    # (nail 0, skin 0.5), (a1, a2) 0.55: every replicate is one of these
    lo, hi = result["groups"]["a"]["iou_ci"]
    assert 0.25 <= lo <= 0.55 <= hi <= 0.75 and lo < hi
    assert result["groups"]["b"]["iou_ci"] is None  # one image: no interval
    assert result == evaluate(model, csv, bootstrap=200, seed=1)  # seeded


def test_bootstrap_of_class_counts_by_hand() -> None:
    from segbalance.uncertainty import bootstrap_iou

    # per image [K=2, 4]: background, one foreground class
    one = [[10, 0, 0, 0], [5, 5, 0, 0]]  # fg IoU 0.5
    two = [[10, 0, 0, 0], [0, 0, 0, 0]]  # fg absent: 1.0 alone, left out with others
    counts = np.array([one, two, one], np.float64)
    ci = bootstrap_iou(counts, np.zeros(3), 1, samples=300, seed=0)
    assert ci.groups[0] is not None
    lo, hi = ci.groups[0]
    assert lo == pytest.approx(0.5) and hi <= 1.0  # fg present in every mix with `one`: 0.5
    binary = bootstrap_iou(counts[:, 1], np.zeros(3), 1, samples=300, seed=0)
    assert binary.groups[0] is not None  # binary [N, 4] still works


def test_cli_json_shape_and_table(case, tmp_path, capsys) -> None:
    model, csv = case
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(model), str(csv), "--json", str(out), "--bootstrap", "50"]) == 0
    saved = json.loads(out.read_text())
    assert list(saved) == [
        "groups",
        "classes",
        "mean_group_iou",
        "worst_group_iou",
        "overall_iou",
        "threshold",
        "mean_group_iou_ci",
        "worst_group_iou_ci",
        "bootstrap",
    ]
    entry = saved["groups"]["a"]
    assert list(entry) == ["images", "iou", "dice", "precision", "recall", "classes", "iou_ci"]
    assert list(entry["classes"]) == ["background", "nail", "skin"]
    assert list(entry["classes"]["nail"]) == ["iou", "dice", "precision", "recall"]
    assert saved["groups"]["b"]["classes"]["skin"]["iou"] is None
    printed = capsys.readouterr().out
    assert "mean over foreground classes (background excluded)" in printed
    assert "'-' = class absent" in printed
    table = {line.split()[0]: line.split() for line in printed.splitlines() if line}
    assert table["group"][-3:] == ["background", "nail", "skin"]
    assert table["b"][-1] == "-" and table["a"][2] == "0.5500"


def test_binary_model_on_a_multiclass_manifest_is_refused(case, model_file, capsys) -> None:
    _, csv = case
    assert main(["evaluate", str(model_file), str(csv)]) == 2
    err = capsys.readouterr().err
    assert "binary model" in err and "background, nail, skin" in err and "Traceback" not in err


def test_classes_that_differ_are_named(case, tmp_path) -> None:
    from segbalance.evaluate import evaluate

    model, csv = case
    raw = SPEC.to_json()
    raw["classes"][2] = {"name": "skin", "value": 2}
    other = write_data(tmp_path / "values", ClassSet.model_validate(raw))
    with pytest.raises(UserError, match="'skin' has value 200 in the model, 2 in the data"):
        evaluate(model, other)
    raw["classes"][2] = {"name": "hair", "value": 200}
    renamed = write_data(tmp_path / "names", ClassSet.model_validate(raw))
    with pytest.raises(UserError, match="names: model background, nail, skin; data .*hair"):
        evaluate(model, renamed)
    with pytest.raises(UserError, match="no threshold"):
        evaluate(model, csv, threshold=0.3)


def test_multiclass_model_on_binary_data_is_refused(case, tmp_path) -> None:
    from segbalance.evaluate import evaluate

    model, _ = case
    root = tmp_path / "binary"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(root / "images" / "x.png")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(root / "masks" / "x.png")
    manifest = Manifest(
        root=root,
        image=("images/x.png",),
        mask=("masks/x.png",),
        group=("a",),
        split=("valid",),
        height=[SIZE],
        width=[SIZE],
        coverage=[0.0],
        mask_rule=("0/255",),
    )
    csv = write_manifest(manifest, root / "manifest.csv")
    with pytest.raises(UserError, match="3-class model .* binary masks .*--classes"):
        evaluate(model, csv)


def test_a_data_root_is_read_with_the_models_classes(case) -> None:
    from segbalance.evaluate import evaluate

    model, csv = case
    from_root = evaluate(model, csv.parent.parent, bootstrap=0)  # prepared on the fly
    from_csv = evaluate(model, csv, bootstrap=0)
    for name, entry in from_csv["classes"].items():
        assert from_root["classes"][name] == pytest.approx(entry)
    assert from_root["overall_iou"] == pytest.approx(from_csv["overall_iou"])
