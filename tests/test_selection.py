"""The selection split: ``prepare --selection-fraction`` draws it, ``data.selection_split``
picks the best epoch on it (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_adaptive import TINY as ADAPTIVE_TINY
from test_adaptive import _rows
from test_reliability_resume import Stop, StopAtEpoch

from segbalance.config import load_config
from segbalance.data.folds import assign_folds
from segbalance.data.manifest import read_manifest
from segbalance.data.splits import assign_splits, draw_selection
from segbalance.errors import UserError

KEYS = [
    f"img/{g}/{i:03d}.png" for g, n in (("0", 60), ("1", 12), ("2", 5), ("3", 2)) for i in range(n)
]
GROUPS = [k.split("/")[1] for k in KEYS]


def _splits(fraction: float = 0.2, seed: int = 0) -> list[str]:
    return draw_selection(KEYS, GROUPS, assign_splits(KEYS, GROUPS, 0.2, seed), fraction, seed)


# --------------------------------------------------------------------------- the draw
def test_selection_comes_from_train_rows_only_and_is_stratified() -> None:
    before = assign_splits(KEYS, GROUPS, 0.2, seed=0)
    after = _splits()
    moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert moved and all(before[i] == "train" and after[i] == "select" for i in moved)
    counts = Counter(zip(GROUPS, after, strict=True))
    assert counts["0", "select"] == 12 and counts["1", "select"] == 2  # round(n * 0.2)
    assert counts["2", "select"] == 1  # round(1.0); and 3 train rows left
    # Two rows: one valid, one train; the last train row is never taken.
    assert counts["3", "select"] == 0 and counts["3", "train"] == 1
    for g in set(GROUPS):
        assert counts[g, "train"] >= 1


def test_selection_is_seeded_independent_of_other_groups_and_zero_is_a_no_op() -> None:
    assert _splits(seed=3) == _splits(seed=3)
    assert _splits(seed=3) != _splits(seed=4)
    base = assign_splits(KEYS, GROUPS, 0.2, seed=0)
    assert draw_selection(KEYS, GROUPS, base, 0.0, seed=0) == base
    keys, groups = [*KEYS, "img/9/a.png", "img/9/b.png"], [*GROUPS, "9", "9"]
    more = draw_selection(keys, groups, [*base, "train", "train"], 0.2, seed=0)
    assert more[: len(KEYS)] == _splits()
    # Not the validation draw again: the selected rows differ from a second valid draw.
    selected = {KEYS[i] for i, s in enumerate(_splits()) if s == "select"}
    assert selected and selected.isdisjoint(
        k for k, s in zip(KEYS, base, strict=True) if s == "valid"
    )


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(UserError, match="--selection-fraction"):
        draw_selection(KEYS, GROUPS, ["train"] * len(KEYS), fraction, seed=0)


def test_select_rows_are_in_no_fold() -> None:
    splits = _splits()
    folds = assign_folds(KEYS, GROUPS, 3, seed=0, splits=splits)
    assert {f for f, s in zip(folds, splits, strict=True) if s == "select"} == {-1}
    assert {f for f, s in zip(folds, splits, strict=True) if s != "select"} == {0, 1, 2}


# --------------------------------------------------------------------------- prepare
def _synth_root(synth_manifest: Path) -> Path:
    return synth_manifest.parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segbalance", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def selected(synth_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synth data prepared with a 0.2 selection split (and 2 folds): its manifest."""
    out = tmp_path_factory.mktemp("sel") / "manifest.csv"
    done = _cli(
        "prepare", str(_synth_root(synth_manifest)), "--out", str(out),
        "--selection-fraction", "0.2", "--folds", "2", "--quiet", "--workers", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "select" in done.stdout.splitlines()[0].split()  # the summary's column
    return out


def test_prepare_writes_the_select_split_and_says_so(selected: Path, synth_manifest: Path) -> None:
    m, plain = read_manifest(selected), read_manifest(synth_manifest)
    sel = m.select(split="select")
    assert len(sel) > 0 and set(sel.group) == set(plain.group)
    # The valid rows are those of the plain prepare: only train rows moved.
    assert set(m.select(split="valid").image) == set(plain.select(split="valid").image)
    assert set(sel.image) <= set(plain.select(split="train").image)
    assert m.fold is not None and set(m.fold[np.array(m.split) == "select"]) == {-1}
    sidecar = json.loads(selected.with_suffix(".json").read_text())
    assert sidecar["selection"] == "seeded, selection_fraction=0.2"


def test_prepare_refuses_fractions_that_leave_no_train_rows(
    synth_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.csv"
    done = _cli(
        "prepare", str(_synth_root(synth_manifest)), "--out", str(out),
        "--valid-fraction", "0.5", "--selection-fraction", "0.5", "--quiet",
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--selection-fraction 0.5" in done.stderr and "nothing would be left" in done.stderr
    assert not out.exists()


def test_selection_rows_auto_none_named_and_refused(selected: Path, synth_manifest: Path) -> None:
    from segbalance.train.plan import load_run_data, selection_rows

    def cfg(path: Path, split: Any) -> Any:
        return load_config(None, {"data.manifest": str(path), "data.selection_split": split})

    m = read_manifest(selected)
    assert len(selection_rows(cfg(selected, "auto"), m) or []) == m.split.count("select")
    assert selection_rows(cfg(selected, "none"), m) is None
    as_valid = load_config(None, {"data.manifest": str(selected), "data.valid_split": "select"})
    assert selection_rows(as_valid, m) is None  # validating on them already
    assert selection_rows(cfg(synth_manifest, "auto"), read_manifest(synth_manifest)) is None
    with pytest.raises(UserError, match="has no 'select' rows.*--selection-fraction"):
        load_run_data(cfg(synth_manifest, "select"))
    with pytest.raises(UserError, match="is the train split"):
        selection_rows(cfg(selected, "train"), m)
    train, valid, select = load_run_data(cfg(selected, "auto"))
    assert select is not None and not set(select.image) & (set(train.image) | set(valid.image))


# --------------------------------------------------------------------------- training
@pytest.mark.heavy
def test_the_select_split_picks_the_best_epoch_and_resumes(selected: Path, tmp_path: Path) -> None:
    """An adaptive run on a manifest with a select split: valid steers the weights, the
    select columns pick best.keras; stopped after epoch 1 and resumed, it equals the
    uninterrupted run; a resume without the split is refused."""
    from segbalance.artifacts import read_meta
    from segbalance.train import train
    from segbalance.train.logs import read_history

    cfg = load_config(None, {**ADAPTIVE_TINY, "data.manifest": str(selected)})
    full = train(cfg, tmp_path / "full")
    rows = full.history
    assert {"select_mean_group_iou", "select_loss", "select_iou_0"} <= set(rows[0])
    scores = [r["select_mean_group_iou"] for r in rows]
    assert full.best_epoch == int(np.argmax(scores)) + 1  # earliest on ties, as np.argmax
    assert full.best_score == pytest.approx(max(scores))
    assert full.metrics["selection_split"] == "select"
    assert full.metrics["best"]["selection"]["select_mean_group_iou"] == pytest.approx(max(scores))
    meta = read_meta(tmp_path / "full" / "best.keras")
    assert meta.extra["score"] == pytest.approx(max(scores))
    # Valid still steers the weights: the select rows give other per-group numbers.
    assert any(r["val_loss"] != r["select_loss"] for r in rows)

    cut = tmp_path / "cut"
    with pytest.raises(Stop):
        train(cfg, cut, callbacks=[StopAtEpoch(1)])
    resumed = train(cfg, cut, resume=True)
    assert _rows(read_history(cut / "history.csv")) == _rows(
        read_history(tmp_path / "full" / "history.csv")
    )
    assert resumed.best_epoch == full.best_epoch

    off = load_config(
        None, {**ADAPTIVE_TINY, "data.manifest": str(selected), "data.selection_split": "none"}
    )
    with pytest.raises(UserError, match="config|selection split"):
        train(off, cut, resume=True)


def test_the_monitor_reads_the_select_columns_only_when_a_split_picks() -> None:
    from segbalance.train.logs import best_row, history_columns, metrics_summary

    rows = [
        {"epoch": 1, "mean_group_iou": 0.9, "select_mean_group_iou": 0.2, "val_loss": 0.1},
        {"epoch": 2, "mean_group_iou": 0.5, "select_mean_group_iou": 0.6, "val_loss": 0.3},
    ]
    for r in rows:
        r["select_loss"] = 1.0 - r["select_mean_group_iou"]
    assert best_row(rows, "mean_group_iou")["epoch"] == 1
    assert best_row(rows, "mean_group_iou", selection=True)["epoch"] == 2
    assert best_row(rows, "val_loss", selection=True)["epoch"] == 2  # min of select_loss
    picked = metrics_summary(rows, ["0"], "mean_group_iou", epochs=2, stopped_early=False,
                             selection="select")  # fmt: skip
    assert (picked["best_epoch"], picked["best_score"]) == (2, 0.6)
    plain = metrics_summary(rows, ["0"], "mean_group_iou", epochs=2, stopped_early=False)
    assert (plain["best_epoch"], plain["best_score"]) == (1, 0.9) and "selection" not in plain[
        "best"
    ]
    assert not any(c.startswith("select") for c in history_columns(["0"]))
    assert "select_iou_0" in history_columns(["0"], selection=True)


def test_a_resume_with_another_selection_split_names_it() -> None:
    from segbalance.train.fingerprint import data_changes

    part = {"rows": 3, "groups": {"0": 3}, "sha256": "a"}
    old = {"train": part, "valid": part, "select": part}
    new = {"train": part, "valid": part}
    assert data_changes(old, new) == [
        "the run started with a selection split (data.selection_split)"
    ]
    assert data_changes(new, old) == [
        "the run started with no selection split (data.selection_split)"
    ]
    moved = {**old, "select": {"rows": 4, "groups": {"0": 4}, "sha256": "b"}}
    assert data_changes(old, moved) == ["select rows: 3 -> 4", "select group 0: 3 -> 4 rows"]
