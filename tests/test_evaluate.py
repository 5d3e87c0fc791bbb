"""segbalance evaluate: per-group metrics at the original mask size, JSON shape, data roots.

``model_file`` is the shared random model of conftest.py (groups "0" and "1", threshold 0.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbalance.cli import main
from segbalance.data.manifest import Manifest, write_manifest
from segbalance.errors import UserError

SIZES = {"0": [(48, 80), (64, 64), (70, 50)], "1": [(64, 64), (40, 96)], "9": [(64, 64)]}


def write_pair(root: Path, group: str, i: int, hw: tuple[int, int], rng) -> tuple[str, str]:
    h, w = hw
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y : y + h // 2, x : x + w // 3] = 255
    image[mask > 0] //= 3  # the foreground is darker: something for the model to react to
    rel_img, rel_msk = f"Images/{group}/{i}.png", f"Masks/{group}/{i}.png"
    for rel, arr in ((rel_img, image), (rel_msk, mask)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel)
    return rel_img, rel_msk


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """A data root in the tutorial layout with masks of several sizes, and its manifest."""
    root = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("image", "mask", "group", "split", "height", "width")}
    for group, sizes in SIZES.items():
        for i, hw in enumerate(sizes):
            img, msk = write_pair(root, group, i, hw, rng)
            split = "valid" if i == 0 else "train"
            for key, value in zip(rows, (img, msk, group, split, *hw), strict=True):
                rows[key].append(value)
    n = len(rows["image"])
    manifest = Manifest(root=root, coverage=np.zeros(n), mask_rule=("0/255",) * n, **rows)
    csv = write_manifest(manifest, root / "segbalance" / "manifest.csv")
    return root, Path(csv)


def numpy_reference(model_file: Path, root: Path, rows: list[tuple[str, str, str]], batch: int):
    """Per-group metrics computed directly: same logits, numpy thresholding and sums."""
    import tensorflow as tf

    from segbalance.artifacts import load_model
    from segbalance.pipeline.decode import preprocess_for_model

    model, _ = load_model(model_file)
    sums: dict[str, np.ndarray] = {}
    images: dict[str, int] = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        pics = [np.asarray(Image.open(root / r[0]).convert("RGB")) for r in chunk]
        x = np.stack([preprocess_for_model(p, (64, 64)) for p in pics])
        logits = np.asarray(model(x, training=False))
        for (_, mask_rel, group), lg in zip(chunk, logits, strict=True):
            truth = np.asarray(Image.open(root / mask_rel)) > 0
            full = np.asarray(tf.image.resize(lg[None], truth.shape, method="bilinear"))[0, ..., 0]
            pred = 1.0 / (1.0 + np.exp(-full.astype(np.float64))) > 0.5
            tp = np.sum(pred & truth)
            fp = np.sum(pred & ~truth)
            fn = np.sum(~pred & truth)
            sums[group] = sums.get(group, np.zeros(3)) + np.array([tp, fp, fn])
            images[group] = images.get(group, 0) + 1
    out = {}
    for g, (tp, fp, fn) in sums.items():
        out[g] = {
            "images": images[g],
            "iou": tp / (tp + fp + fn),
            "dice": 2 * tp / (2 * tp + fp + fn),
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn),
        }
    total = sum(sums.values())
    return out, total[0] / total.sum()


def test_evaluate_equals_numpy_at_original_size(data, model_file) -> None:
    from segbalance.evaluate import evaluate

    root, csv = data
    result = evaluate(model_file, csv, batch_size=2)
    rows = [
        (f"Images/{g}/{i}.png", f"Masks/{g}/{i}.png", g)
        for g, sizes in SIZES.items()
        for i in range(len(sizes))
    ]
    expected, overall = numpy_reference(model_file, root, rows, batch=2)
    assert list(result["groups"]) == ["0", "1", "9"]
    for g, exp in expected.items():
        got = result["groups"][g]
        assert got["images"] == exp["images"]
        for key in ("iou", "dice", "precision", "recall"):
            assert got[key] == pytest.approx(exp[key], abs=1e-9), (g, key)
    ious = [expected[g]["iou"] for g in expected]
    assert result["mean_group_iou"] == pytest.approx(np.mean(ious))
    assert result["worst_group_iou"] == pytest.approx(min(ious))
    assert result["overall_iou"] == pytest.approx(overall)
    assert 0.0 < result["worst_group_iou"] < 1.0  # a real, non-degenerate comparison
    assert result["unknown_groups"] == ["9"]


def test_cli_writes_exact_json_keys_and_table(data, model_file, tmp_path, capsys) -> None:
    _, csv = data
    out = tmp_path / "eval.json"
    code = main(["evaluate", str(model_file), str(csv), "--split", "valid", "--json", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert list(saved) == [
        "groups",
        "mean_group_iou",
        "worst_group_iou",
        "overall_iou",
        "threshold",
        "mean_group_iou_ci",
        "worst_group_iou_ci",
        "bootstrap",
    ]
    assert saved["bootstrap"] == {"samples": 1000, "level": 0.95, "seed": 0}
    assert set(saved["groups"]) == {"0", "1", "9"}
    for entry in saved["groups"].values():
        assert list(entry) == ["images", "iou", "dice", "precision", "recall", "iou_ci"]
        assert entry["images"] == 1  # one valid image per group
        assert entry["iou_ci"] is None  # one image: no interval
    lo, hi = saved["worst_group_iou_ci"]
    assert lo <= saved["worst_group_iou"] <= hi
    assert saved["threshold"] == 0.5
    printed = capsys.readouterr().out
    assert "mean_group_iou" in printed and "9*" in printed  # unknown group flagged
    assert not list(tmp_path.glob(".eval.json*"))  # no temp file left behind


def test_threshold_flag_changes_the_result(data, model_file) -> None:
    from segbalance.evaluate import evaluate

    _, csv = data
    low = evaluate(model_file, csv, threshold=0.05)
    high = evaluate(model_file, csv, threshold=0.95)
    assert low["threshold"] == 0.05
    assert low["groups"]["0"]["recall"] >= high["groups"]["0"]["recall"]
    assert low["groups"]["0"]["precision"] != high["groups"]["0"]["precision"]


def test_data_root_is_prepared_on_the_fly(data, model_file) -> None:
    from segbalance.evaluate import evaluate

    root, csv = data
    from_root = evaluate(model_file, root, batch_size=3)
    from_csv = evaluate(model_file, csv, batch_size=3)
    assert list(from_root["groups"]) == list(from_csv["groups"])
    for g, entry in from_csv["groups"].items():
        mine = dict(from_root["groups"][g])
        assert mine.pop("iou_ci") == pytest.approx(entry["iou_ci"])
        assert mine == pytest.approx({k: v for k, v in entry.items() if k != "iou_ci"})
    assert from_root["overall_iou"] == pytest.approx(from_csv["overall_iou"])


def test_bad_inputs_are_user_errors(data, model_file, tmp_path) -> None:
    from segbalance.evaluate import evaluate

    _, csv = data
    with pytest.raises(UserError, match="neither a manifest"):
        evaluate(model_file, tmp_path / "missing.csv")
    with pytest.raises(UserError, match="no 'test' rows"):
        evaluate(model_file, csv, split="test")
    with pytest.raises(UserError, match="threshold"):
        evaluate(model_file, csv, threshold=1.5)
    assert main(["evaluate", str(tmp_path / "none.keras"), str(csv)]) == 2
