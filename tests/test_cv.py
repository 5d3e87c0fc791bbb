"""segbalance cv: one run per fold, per-group mean +- std and the pooled out-of-fold IoU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_compare import TINY  # the same tiny budget

from segbalance.cli import main
from segbalance.cv import spread
from segbalance.data.prepare import prepare_dataset
from segbalance.data.synth import generate


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    generate(root, scale=0.03, size=32, seed=0, progress=False, workers=1)
    return root


def test_two_folds_pooled_out_of_fold_then_reused(data: Path, tmp_path: Path, capsys) -> None:
    manifest = prepare_dataset(data, tmp_path / "m.csv", folds=2, progress=False).manifest_path
    work = tmp_path / "cv"
    argv = ["cv", str(manifest), "--folds", "2", "--work-dir", str(work), *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pooled out-of-fold IoU" in out and "+-" in out
    summary = json.loads((work / "cv.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    pooled = summary["pooled"]
    fold_images = sum(f["groups"]["0"]["images"] for f in summary["folds"])
    assert pooled["groups"]["0"]["images"] == fold_images  # every train/valid image once
    assert "iou_ci" in pooled["groups"]["0"] and pooled["worst_group_iou_ci"] is not None
    for k in (0, 1):
        assert (work / f"fold{k}" / "metrics.json").is_file()
        run_cfg = (work / f"fold{k}" / "config.yaml").read_text()
        assert f"fold: {k}" in run_cfg
    assert main(argv) == 0  # again: both folds reused
    assert "[cv] resuming fold 1" in capsys.readouterr().out


def test_refusals_exit_2_nothing_written(data: Path, tmp_path: Path, capsys) -> None:
    plain = prepare_dataset(data, tmp_path / "p.csv", progress=False).manifest_path
    folded = prepare_dataset(data, tmp_path / "f.csv", folds=2, progress=False).manifest_path
    work = tmp_path / "cv"
    assert main(["cv", str(plain), "--work-dir", str(work), *TINY]) == 2
    assert "--folds K" in capsys.readouterr().err
    assert main(["cv", str(folded), "--folds", "3", "--work-dir", str(work), *TINY]) == 2
    assert "has 2 folds" in capsys.readouterr().err
    assert not work.exists()


def test_spread_is_mean_and_sample_std_over_folds() -> None:
    def fold(iou: float | None) -> dict:
        return {"groups": {"0": {"iou": iou}}, "mean_group_iou": iou, "worst_group_iou": iou}

    out = spread([fold(0.5), fold(0.7), fold(None)], ["0"])
    assert out["0"]["mean_iou"] == pytest.approx(0.6)
    assert out["0"]["std_iou"] == pytest.approx(0.1414, abs=1e-3)  # ddof=1, the None skipped
