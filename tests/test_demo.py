"""segbalance demo: the whole chain on tiny settings, the work-dir rule, the summary text."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from segbalance import demo
from segbalance.cli import main
from segbalance.errors import UserError
from segbalance.evaluate import JSON_KEYS

KEYS = [k for k in JSON_KEYS if k != "classes"]  # the binary evaluate JSON, with intervals


@pytest.mark.heavy
def test_demo_smoke_on_tiny_settings(tmp_path, monkeypatch, capsys) -> None:
    """`segbalance demo --quick` with the quick settings swapped for tiny ones."""
    monkeypatch.setattr(demo, "QUICK", demo.TINY)
    work = tmp_path / "demo"
    assert main(["demo", "--work-dir", str(work), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "Held-out IoU per group" in out and "comparison figure" in out
    summary = json.loads((work / "demo.json").read_text())
    assert summary["settings"]["image_size"] == demo.TINY.image_size
    assert summary["train_images"] == {"0": 12, "1": 2, "2": 2, "3": 2, "4": 2}
    for balance in ("proportional", "uniform"):
        run = work / "runs" / balance
        assert (run / "best.keras").is_file()
        saved = json.loads((run / "heldout.json").read_text())
        assert list(saved) == KEYS
        assert saved == summary["heldout"][balance]
        # the held-out set is balanced: the same number of images in every group
        assert {g["images"] for g in saved["groups"].values()} == {demo.TINY.heldout_per_group}
        history = (run / "history.csv").read_text().splitlines()
        assert len(history) == 1 + demo.TINY.epochs
    # same budget: the two configs differ in the balancing only
    configs = [
        yaml.safe_load((work / "runs" / b / "config.yaml").read_text()) for b in demo.BALANCES
    ]
    assert [c["sampling"].pop("balance") for c in configs] == list(demo.BALANCES)
    assert configs[0] == configs[1]
    for name in ("comparison.png", "stats.png"):
        with Image.open(work / name) as img:
            assert img.format == "PNG" and img.size[0] > 800
    steps = ["synth", "prepare", "stats", "train_proportional", "train_uniform", "evaluate"]
    assert list(summary["seconds"]) == [*steps, "figure", "total"]
    assert summary["seconds"]["total"] > 0


def test_work_dir_must_be_empty_or_an_earlier_demo(tmp_path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        demo.claim_work_dir(busy, demo.OUTPUTS)
    assert (busy / "thesis.tex").read_text() == "keep me"
    earlier = tmp_path / "earlier"
    (earlier / "runs" / "uniform").mkdir(parents=True)
    (earlier / "demo.json").write_text("{}")
    (earlier / "notes.txt").write_text("mine")
    demo.claim_work_dir(earlier, demo.OUTPUTS)
    assert not (earlier / "runs").exists()  # what a demo wrote is replaced
    assert (earlier / "notes.txt").exists()  # nothing else is touched


def test_write_heldout_is_balanced_and_deterministic(tmp_path) -> None:
    counts = demo.write_heldout(tmp_path / "a", 2, 32, seed=5)
    demo.write_heldout(tmp_path / "b", 2, 32, seed=5)
    assert counts == {g: 2 for g in "01234"}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * 5 * 2
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    mask = np.asarray(Image.open(tmp_path / "a" / "Masks" / "4" / "heldout_4_0000.png"))
    assert set(np.unique(mask)) <= {0, 255}


def _result(ious: dict[str, float]) -> dict:
    groups = {
        g: {"images": 10, "iou": v, "dice": 0, "precision": 0, "recall": 0} for g, v in ious.items()
    }
    vals = list(ious.values())
    return {
        "groups": groups,
        "mean_group_iou": float(np.mean(vals)),
        "worst_group_iou": min(vals),
        "overall_iou": 0.5,
        "threshold": 0.5,
    }


def test_table_and_verdict_report_the_measured_differences() -> None:
    prop = _result({"0": 0.80, "1": 0.60, "2": 0.40})
    uni = _result({"0": 0.75, "1": 0.65, "2": 0.55})
    counts = {"0": 100, "1": 20, "2": 5}
    table = demo.comparison_table({"proportional": prop, "uniform": uni}, counts)
    row2 = next(line for line in table.splitlines() if line.startswith("2 "))
    assert "0.400" in row2 and "0.550" in row2 and "+0.150" in row2
    text = demo.verdict({"heldout": {"proportional": prop, "uniform": uni}, "train_images": counts})
    assert "group 2 +0.150" in text and "group 1 +0.050" in text
    assert "worst-group IoU +0.150 (raised)" in text and "largest group 0 -0.050" in text
    worse = demo.verdict(
        {"heldout": {"proportional": uni, "uniform": prop}, "train_images": counts}
    )
    assert "(did not raise)" in worse
