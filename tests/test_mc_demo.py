"""The multiclass demo end to end at the tiny settings: files, JSON shape, table and verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segbalance import demo_multiclass
from segbalance.cli import build_parser, main
from segbalance.demo import claim_work_dir


@pytest.mark.heavy
def test_multiclass_demo_runs_and_reports_every_class(tmp_path) -> None:
    work = tmp_path / "demo"
    summary = demo_multiclass.run_multiclass_demo(work, settings=demo_multiclass.TINY)
    for name in ("comparison.png", "demo.json", "runs/uniform/best.keras"):
        assert (work / name).is_file(), name
    saved = json.loads((work / "demo.json").read_text())
    assert saved["task"] == "multiclass"
    # groups come from the rarest class (prepare --group-by rarest-class), not the folders
    assert set(saved["train_images"]) <= {"none", "nail", "ring"}
    for balance in ("proportional", "uniform"):
        result = saved["heldout"][balance]
        assert list(result["classes"]) == ["background", "nail", "ring"]
        for entry in result["groups"].values():
            assert set(entry["classes"]) == {"background", "nail", "ring"}
    assert "mean (fg)" in summary["table"] and "background excluded" in summary["table"]
    assert "ring" in demo_multiclass.verdict(summary)
    # the trained model goes on through the user's commands: evaluate, predict, export
    model = str(work / "runs" / "uniform" / "best.keras")
    heldout = str(work / "heldout" / "segbalance" / "manifest.csv")
    assert main(["evaluate", model, heldout, "--split", "all", "--bootstrap", "0"]) == 0
    photos = work / "heldout" / "Images" / "3"
    out = tmp_path / "pred"
    assert main(["predict", model, str(photos), "--out", str(out), "--colors"]) == 0
    masks = sorted((out / "masks").rglob("*.png"))
    assert masks and all(set(np.unique(np.asarray(Image.open(m)))) <= {0, 1, 2} for m in masks)
    exported = tmp_path / "exported"
    assert main(["export", model, "--format", "savedmodel", "--out", str(exported)]) == 0
    assert (exported / "saved_model.pb").is_file()
    # claiming the folder again (a second run) removes only what the demo wrote
    (work / "mine.txt").write_text("a user's note")
    claim_work_dir(work, demo_multiclass.OUTPUTS)
    assert (work / "mine.txt").read_text() == "a user's note"
    assert not (work / "runs").exists() and not (work / "data").exists()


def test_demo_task_flag() -> None:
    args = build_parser().parse_args(["demo", "--task", "multiclass", "--quick"])
    assert args.task == "multiclass" and args.work_dir is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--task", "multilabel"])
