"""Multiclass core: the classes file, label-mask reading, per-class counts, metrics, losses.

Losses and metrics are checked against hand-computed numbers and against independent
implementations (numpy written out here, keras.metrics.MeanIoU).
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.classes import (
    IGNORE_INDEX,
    auto_class_weights,
    class_pixel_fractions,
    classes_from_json,
    load_classes,
    resolve_class_weights,
)
from segbalance.errors import UserError
from segbalance.label_masks import ClassRuleError, class_rule, label_map, read_label_mask
from segbalance.losses import SegmentationLoss, parse_loss_expression
from segbalance.metrics import GroupMetrics, class_confusion_counts, summary_metrics

SPEC = classes_from_json(
    {
        "classes": [
            {"name": "background", "value": 0},
            {"name": "nail", "value": 1, "color": [255, 0, 0]},
            {"name": "skin", "value": 2, "color": [0, 255, 0]},
        ],
        "ignore": 255,
    },
    "test",
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- classes file -------------------------------------------------------------------------


def test_classes_file_reads_names_values_and_background_colour(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text(
        "classes:\n  - {name: background, value: 0}\n"
        "  - {name: nail, value: 1, color: [255, 0, 0]}\nignore: 255\n"
    )
    spec = load_classes(path)
    assert spec.names == ["background", "nail"] and spec.foreground == ["nail"]
    assert spec.num_classes == 2 and spec.ignore == 255
    # a background without a colour is black in colour masks; the file stays as written
    assert spec.mask_colors() == [(0, 0, 0), (255, 0, 0)] and spec.has_colors
    assert spec.palette().tolist() == [[0, 0, 0], [255, 0, 0]]
    assert classes_from_json(spec.to_json(), "again") == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("classes: [{name: a, value: 0}]", "1 class(es) given: list 2..255"),
        (
            "classes: [{name: a, value: 0}, {name: b, value: 0}]",
            "classes a and b share the value 0",
        ),
        ("classes: [{name: a, value: 0}, {name: a, value: 1}]", "share the name a"),
        ("classes: [{name: bg, value: 0}, {name: Nail, value: 1}, {name: nail, value: 2}]", "case"),
        ("classes: [{name: a, value: 0}, {name: b, value: 1, color: [1, 2, 3, 4]}]", "[R, G, B]"),
        ("classes: [{name: a, value: 0}, {name: b, value: 1}]\nignore: [1, 2, 3]", "ignore_color"),
        ("classes: [{name: a, value: 0}, {name: b, value: 300}]", "classes.1.value"),
        ("classes: [{name: a b, value: 0}, {name: c, value: 1}]", "class name 'a b'"),
        ("classes: [{name: a, value: 0}, {name: b, value: 1}]\nignore: 1", "ignore 1"),
        ("classes: [{name: a, value: 0}, {name: b, valu: 1}]", "classes.1.valu"),
        ("- a\n- b", "must be a mapping"),
        ("classes: [{name: a, value: 0}, {name: b, value: 1, color: [1, 2, 300]}]", "0..255"),
    ],
)
def test_classes_file_errors_name_the_file_and_key(tmp_path, text, expected):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="classes") as err:
        load_classes(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_classes_file_missing_or_not_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_classes(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="is a folder"):
        load_classes(tmp_path)
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("classes:\n\t- {name: a, value: 0}\n")
    with pytest.raises(UserError, match="not tabs"):
        load_classes(tabs)


def test_one_bad_class_is_the_only_error(tmp_path):
    # pydantic would also count the valid items and say "at least 2" for a 3-class file
    path = tmp_path / "classes.yaml"
    path.write_text("classes: [{name: a, value: 0}, {name: b c, value: 1}, {name: d, value: 2}]")
    with pytest.raises(UserError) as err:
        load_classes(path)
    assert "class name 'b c'" in str(err.value) and "given" not in str(err.value)


def test_a_mask_changed_after_prepare_is_refused_not_ignored(tmp_path):
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).save(path)
    assert read_label_mask(path, SPEC, "class-value").tolist() == [[0, 1], [2, 1]]
    Image.fromarray(np.array([[0, 200], [0, 0]], np.uint8) + 55).save(path)  # now 55/255
    with pytest.raises(ValueError, match="values 55 are no class .*prepare again"):
        read_label_mask(path, SPEC, "class-value")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [unclosed")
    with pytest.raises(UserError, match="cannot read classes file"):
        load_classes(bad)


# --- masks -> class indices ---------------------------------------------------------------


def test_label_map_by_value_reports_unknown_values_and_ignores_the_ignore_value():
    mask = np.array([[0, 1, 2], [255, 7, 1]], np.uint8)
    img = Image.fromarray(mask)
    assert class_rule(img, SPEC) == "class-value"
    labels, unknown = label_map(img, SPEC, "class-value")
    assert labels.tolist() == [[0, 1, 2], [IGNORE_INDEX, IGNORE_INDEX, 1]]
    assert unknown == ["7"]


def test_label_map_reads_palette_indices_and_colour_masks():
    pal = Image.fromarray(np.array([[0, 2], [1, 1]], np.uint8), mode="L").convert("P")
    # a palette PNG holds class indices (VOC style), whatever colours its palette shows
    pal.putpalette([0, 0, 0, 9, 9, 9, 200, 100, 50] + [0] * 759)
    assert class_rule(pal, SPEC) == "class-value"
    assert label_map(pal, SPEC, "class-value")[0].tolist() == [[0, 2], [1, 1]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 0] = (0, 255, 0)
    rgb[1, 1] = (1, 2, 3)
    img = Image.fromarray(rgb)
    assert class_rule(img, SPEC) == "class-color"
    labels, unknown = label_map(img, SPEC, "class-color")
    assert labels.tolist() == [[0, 1], [2, IGNORE_INDEX]] and unknown == ["[1, 2, 3]"]
    # gray saved as RGB reads by value
    gray = Image.fromarray(np.stack([np.array([[0, 2]], np.uint8)] * 3, axis=-1))
    assert class_rule(gray, SPEC) == "class-value"


def test_a_palette_drawing_an_index_in_another_class_colour_is_refused():
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="L").convert("P")
    pal.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0] + [0] * 759)  # 1 drawn green, 2 red
    with pytest.raises(
        ClassRuleError, match="index 1 is drawn .0, 255, 0., the colour of class 'skin'"
    ):
        class_rule(pal, SPEC)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)  # the file's own colours
    assert class_rule(pal, SPEC) == "class-value"


def test_colour_mask_needs_colours():
    spec = classes_from_json(
        {"classes": [{"name": "bg", "value": 0}, {"name": "x", "value": 1}]}, "t"
    )
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    with pytest.raises(ClassRuleError, match="no colour for x"):
        class_rule(Image.fromarray(rgb), spec)


def test_class_fractions_and_auto_weights():
    labels = np.array([0, 0, 0, 1, IGNORE_INDEX, 2, 2, 0])
    assert class_pixel_fractions(labels, 3).tolist() == pytest.approx([4 / 7, 1 / 7, 2 / 7])
    fractions = np.array([[0.9, 0.1, 0.0], [0.7, 0.1, 0.2]])
    w = auto_class_weights(fractions, ["bg", "a", "b"])
    freq = np.array([0.8, 0.1, 0.1])
    raw = 1 / np.sqrt(freq)
    assert list(w.values()) == pytest.approx(list(raw / raw.mean()))
    assert np.mean(list(w.values())) == pytest.approx(1.0)
    # an absent class takes the largest present weight
    w = auto_class_weights(np.array([[0.9, 0.1, 0.0]]), ["bg", "a", "b"])
    assert w["b"] == pytest.approx(w["a"]) and w["b"] > w["bg"]
    assert resolve_class_weights({"nail": 3.0}, SPEC, None) == [1.0, 3.0, 1.0]
    with pytest.raises(UserError, match="unknown class"):
        resolve_class_weights({"nial": 3.0}, SPEC, None)


# --- counts and metrics -------------------------------------------------------------------

LABELS = np.array([[0, 0, 1, 1], [2, 2, 0, IGNORE_INDEX]], np.float32).reshape(1, 2, 4, 1)
PRED = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])  # argmax of the logits below


def _logits(pred: np.ndarray, k: int = 3) -> np.ndarray:
    return (np.eye(k)[pred] * 4.0 - 2.0).astype(np.float32)[None]


def test_class_counts_by_hand():
    counts = class_confusion_counts(LABELS, _logits(PRED)).numpy()[0]
    # counted pixels: 7 (one ignored). class 0: true {0,1,6}, pred {0,5,6}: tp 2, fp 1, fn 1
    assert counts[0].tolist() == [2, 1, 1, 3]
    # class 1: true {2,3}, pred {1,2,3}: tp 2, fp 1, fn 0
    assert counts[1].tolist() == [2, 1, 0, 4]
    # class 2: true {4,5}, pred {4} (pixel 7 is ignored): tp 1, fp 0, fn 1
    assert counts[2].tolist() == [1, 0, 1, 5]


def test_group_metrics_absent_class_rule_and_json_shape():
    gm = GroupMetrics(["a", "b"], SPEC.names)
    c = class_confusion_counts(LABELS, _logits(PRED)).numpy()
    only_nail = np.array([[[5, 0, 0, 0], [2, 0, 2, 5], [0, 0, 0, 9]]], np.float64)
    gm.update([0], c)
    gm.update([1], only_nail)
    out = gm.result()
    a, b = out["groups"]["a"], out["groups"]["b"]
    assert a["classes"]["nail"]["iou"] == pytest.approx(2 / 3)
    assert a["classes"]["skin"]["iou"] == pytest.approx(1 / 2)
    assert a["iou"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # background excluded
    # skin has no true and no predicted pixel in group b: left out, shown as null
    assert b["classes"]["skin"] == dict.fromkeys(("iou", "dice", "precision", "recall"))
    assert b["iou"] == pytest.approx(0.5)
    assert out["worst_group_iou"] == pytest.approx(0.5)
    assert out["mean_group_iou"] == pytest.approx(((2 / 3 + 1 / 2) / 2 + 0.5) / 2)
    # overall: all-pixel IoU per class, then the mean over foreground classes
    nail = (2 + 2) / (2 + 2 + 1 + 2)
    skin = 1 / 2
    assert out["classes"]["nail"]["iou"] == pytest.approx(nail)
    assert out["overall_iou"] == pytest.approx((nail + skin) / 2)
    assert list(out) == [
        "groups",
        "classes",
        "mean_group_iou",
        "worst_group_iou",
        "overall_iou",
    ]


def test_precision_and_recall_leave_out_classes_they_are_undefined_for():
    gm = GroupMetrics(["g"], SPEC.names)
    # nail: 3 true pixels, 2 found; skin: in no mask but predicted on 1 pixel
    gm.update([0], [[[10, 1, 1, 0], [2, 0, 1, 0], [0, 1, 0, 0]]])
    group = gm.result()["groups"]["g"]
    assert group["classes"]["skin"]["recall"] is None  # nothing to find: no recall
    assert group["classes"]["skin"]["precision"] == 0.0 and group["classes"]["skin"]["iou"] == 0
    assert group["recall"] == pytest.approx(2 / 3)  # nail's only, not lifted by skin's 0/0
    assert group["precision"] == pytest.approx((1.0 + 0.0) / 2)
    assert group["iou"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_a_group_with_every_class_absent_scores_one():
    counts = np.array([[10, 0, 0, 0], [0, 0, 0, 10], [0, 0, 0, 10]], np.float64)
    assert summary_metrics(counts, multiclass=True)["iou"] == 1.0


def test_binary_group_metrics_json_unchanged():
    gm = GroupMetrics(["0", "1"])
    gm.update([0, 1], [[3, 1, 2, 10], [0, 0, 0, 5]])
    out = gm.result()
    assert list(out) == ["groups", "mean_group_iou", "worst_group_iou", "overall_iou"]
    assert list(out["groups"]["0"]) == ["images", "iou", "dice", "precision", "recall"]
    assert out["groups"]["0"]["iou"] == 0.5 and out["groups"]["1"]["iou"] == 1.0


def test_overall_mean_iou_agrees_with_keras_mean_iou():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(4, 8, 8, 1)).astype(np.float32)
    logits = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    gm = GroupMetrics(["g"], SPEC.names)
    gm.update(np.zeros(4), class_confusion_counts(labels, logits).numpy())
    ours = gm.result()
    ref = keras.metrics.MeanIoU(num_classes=3)
    ref.update_state(labels.reshape(-1), logits.argmax(-1).reshape(-1))
    matrix = ref.total_cm.numpy()  # rows: true class, columns: predicted
    per_class = np.diag(matrix) / (matrix.sum(0) + matrix.sum(1) - np.diag(matrix))
    # MeanIoU averages every class; ours reports each class and averages the foreground
    assert float(ref.result()) == pytest.approx(np.mean(per_class), rel=1e-6)
    for i, name in enumerate(SPEC.names):
        assert ours["classes"][name]["iou"] == pytest.approx(per_class[i], rel=1e-6)
    assert ours["overall_iou"] == pytest.approx(np.mean(per_class[1:]), rel=1e-6)


# --- losses -------------------------------------------------------------------------------


def _np_terms(labels: np.ndarray, z: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Independent numpy versions of the multiclass terms for one image."""
    y = labels.reshape(-1).astype(int)
    z = z.reshape(-1, z.shape[-1])
    keep = y != IGNORE_INDEX
    y, z = y[keep], z[keep]
    p = _softmax(z)
    onehot = np.eye(z.shape[-1])[y]
    logp = np.log(p)
    ce = (w[y] * -logp[np.arange(len(y)), y]).sum() / w[y].sum()
    inter = (p * onehot).sum(0)
    dice = 1 - ((2 * inter + 1) / (p.sum(0) + onehot.sum(0) + 1) * w).sum() / w.sum()
    pt = p[np.arange(len(y)), y]
    focal = np.mean(-w[y] * (1 - pt) ** 2.0 * np.log(pt))
    tp, fp, fn = inter, p.sum(0) - inter, onehot.sum(0) - inter
    tversky = 1 - (((tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1)) * w).sum() / w.sum()
    return {"ce": ce, "dice": dice, "focal": focal, "tversky": tversky}


def _np_lovasz(labels: np.ndarray, z: np.ndarray) -> float:
    y = labels.reshape(-1).astype(int)
    z = z.reshape(-1, z.shape[-1])
    keep = y != IGNORE_INDEX
    y, p = y[keep], _softmax(z[keep])
    losses = []
    for c in range(z.shape[-1]):
        fg = (y == c).astype(float)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors, kind="stable")
        e, g = errors[order], fg[order]
        inter = g.sum() - np.cumsum(g)
        union = g.sum() + np.cumsum(1 - g)
        jac = 1 - inter / union
        grad = np.concatenate([jac[:1], np.diff(jac)])
        losses.append(float(e @ grad))
    return float(np.mean(losses))


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.5]])
def test_multiclass_losses_match_numpy(weights):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(1, 2, 4, 3)).astype(np.float32)
    w = np.array(weights or [1.0, 1.0, 1.0])
    expected = _np_terms(LABELS, z, w)
    for name, value in expected.items():
        loss = SegmentationLoss(name, classes=3, class_weights=weights)
        assert float(loss.call(LABELS, z)[0]) == pytest.approx(value, rel=1e-5), name
    lovasz = SegmentationLoss("lovasz", classes=3, class_weights=weights)
    assert float(lovasz.call(LABELS, z)[0]) == pytest.approx(_np_lovasz(LABELS, z), rel=1e-5)
    both = SegmentationLoss("0.5*ce+dice", classes=3, class_weights=weights)
    assert float(both.call(LABELS, z)[0]) == pytest.approx(
        0.5 * expected["ce"] + expected["dice"], rel=1e-5
    )


def test_ignored_pixels_change_no_loss_and_no_gradient():
    z = tf.Variable(np.random.default_rng(2).normal(size=(1, 2, 4, 3)).astype(np.float32))
    loss = SegmentationLoss("ce+dice+focal+tversky+lovasz", classes=3)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(loss.call(LABELS, z))
    grad = tape.gradient(value, z).numpy()
    assert np.all(grad[0, 1, 3] == 0.0)  # the ignored pixel
    assert np.any(grad[0, 0, 0] != 0.0)
    moved = z.numpy().copy()
    moved[0, 1, 3] += 5.0
    assert float(tf.reduce_sum(loss.call(LABELS, moved))) == pytest.approx(float(value))


def test_perfect_prediction_costs_little_and_serialises():
    z = _logits(np.array([[0, 0, 1, 1], [2, 2, 0, 0]])) * 5
    loss = SegmentationLoss("ce+dice", classes=3, class_weights=[1, 2, 3])
    assert float(loss.call(LABELS, z)[0]) < 0.01
    again = SegmentationLoss.from_config(loss.get_config())
    assert again.classes == 3 and again.class_weights == [1.0, 2.0, 3.0]
    assert math.isclose(float(again.call(LABELS, z)[0]), float(loss.call(LABELS, z)[0]))


def test_loss_names_depend_on_the_task():
    assert parse_loss_expression("ce+dice", classes=3) == [(1.0, "ce"), (1.0, "dice")]
    with pytest.raises(UserError, match="loss for 3 classes 'bce'"):
        parse_loss_expression("bce", classes=3)
    assert parse_loss_expression("ce", classes=1) == [(1.0, "ce")]  # binary ce is bce


def test_mask_problems_say_how_to_fix_them():
    from segbalance.data.class_masks import ClassChoice, check_class_mask

    choice = ClassChoice(SPEC, "classes.yaml")
    big = Image.fromarray(np.array([[0, 300], [600, 1]], np.uint16).astype(np.int32), mode="I")
    problem = check_class_mask(big, "m.png", choice)
    assert "values 300, 600 are no class of classes.yaml" in problem.problem
    assert "class values are 0..255" in problem.fix  # not "add the class": values stop at 255
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (250, 5, 5)  # an anti-aliased edge
    problem = check_class_mask(Image.fromarray(rgb), "c.png", choice)
    assert "colour [250, 5, 5] is no class" in problem.problem
    assert "ignore_color: [R, G, B]" in problem.fix


@pytest.mark.parametrize(
    ("value", "expected"),
    [("autoo", "'autoo' is not a class-weight"), ({"ring": -1}, "weight -1 of class 'ring'")],
)
def test_class_weights_config_errors_are_one_plain_line(value, expected):
    from segbalance.config import load_config

    with pytest.raises(UserError) as err:
        load_config(None, {"loss.class_weights": value})
    assert expected in str(err.value) and "literal" not in str(err.value)
    assert load_config(None, {"loss.class_weights": {"ring": 2}}).loss.class_weights == {
        "ring": 2.0
    }


def test_binary_model_file_and_loss_keep_their_keys():
    from segbalance.artifacts import ModelMeta

    assert "classes" not in json.loads(ModelMeta((32, 32), ["a"]).to_json())
    assert "classes" not in SegmentationLoss("dice").get_config()
    assert SegmentationLoss("dice", classes=3).get_config()["classes"] == 3


def test_a_multiclass_csv_without_its_sidecar_classes_is_refused(tmp_path):
    from segbalance.data.manifest import Manifest, read_manifest, sidecar_path, write_manifest
    from segbalance.errors import InvalidDataError

    for name in ("a", "b"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / f"{name}_m.png")
    manifest = Manifest(
        tmp_path, ["a.png", "b.png"], ["a_m.png", "b_m.png"], ["g", "g"], ["train", "valid"],
        [4, 4], [4, 4], [0.0, 0.0], ["class-value"] * 2,
        classes=SPEC, class_coverage=[[1, 0, 0], [1, 0, 0]],
    )  # fmt: skip
    csv = write_manifest(manifest, tmp_path / "seg" / "manifest.csv")
    assert read_manifest(csv).classes == SPEC
    side = sidecar_path(csv)
    meta = json.loads(side.read_text())
    del meta["classes"]  # a sidecar replaced by a binary one
    side.write_text(json.dumps(meta))
    with pytest.raises(InvalidDataError, match="'class-value' is a multiclass rule"):
        read_manifest(csv)
