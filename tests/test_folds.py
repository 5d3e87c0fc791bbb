"""Group-stratified folds: prepare --folds K, the fold column, train/plan --fold k."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from segbalance.cli import main
from segbalance.config import load_config
from segbalance.data.folds import assign_folds, fold_rows
from segbalance.data.manifest import read_manifest, write_manifest
from segbalance.data.prepare import prepare_dataset
from segbalance.data.synth import generate
from segbalance.errors import UserError
from segbalance.train.plan import split_rows, training_rows


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("folds")
    generate(data, scale=0.05, size=32, seed=0, progress=False, workers=1)
    return data


def test_every_group_spread_evenly_and_fold_totals_even() -> None:
    groups = ["0"] * 37 + ["1"] * 7 + ["2"] * 3 + ["3"] * 1
    keys = [f"img{i}.png" for i in range(len(groups))]
    folds = assign_folds(keys, groups, 4, seed=3)
    for g in set(groups):
        sizes = collections.Counter(f for f, gg in zip(folds, groups, strict=True) if gg == g)
        per_fold = [sizes.get(f, 0) for f in range(4)]
        assert max(per_fold) - min(per_fold) <= 1, (g, per_fold)
    totals = collections.Counter(folds)
    assert max(totals.values()) - min(totals.values()) <= 1
    assert folds == assign_folds(keys, groups, 4, seed=3)  # seeded
    assert folds != assign_folds(keys, groups, 4, seed=4)


def test_test_rows_are_in_no_fold_and_bad_counts_refused() -> None:
    folds = assign_folds(["a", "b", "c", "d"], ["0"] * 4, 2, 0, ["train", "test", "valid", "train"])
    assert folds[1] == -1 and sorted(folds[i] for i in (0, 2, 3)) == [0, 0, 1]
    with pytest.raises(UserError, match="at least 2"):
        assign_folds(["a", "b"], ["0", "0"], 1, 0)
    with pytest.raises(UserError, match="some fold would be empty"):
        assign_folds(["a", "b"], ["0", "0"], 3, 0)


def test_prepare_folds_writes_the_column_and_reads_back(root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.csv"
    assert main(["prepare", str(root), "--out", str(out), "--folds", "3", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "3 folds" in text and "fold 2" in text
    assert out.read_text().splitlines()[0].endswith(",mask_rule,fold")
    m = read_manifest(out)
    assert m.fold is not None and set(m.fold.tolist()) == {0, 1, 2}
    assert "folds" in json.loads(out.with_suffix(".json").read_text())
    # A round trip keeps the column; a manifest without folds gains none.
    again = tmp_path / "again.csv"
    write_manifest(m, again)
    assert again.read_text() == out.read_text()


def test_no_folds_keeps_outputs_byte_identical(root: Path, tmp_path: Path) -> None:
    plain = prepare_dataset(root, tmp_path / "a.csv", progress=False, workers=1)
    assert plain.manifest.fold is None
    text = (tmp_path / "a.csv").read_text()
    assert "fold" not in text.splitlines()[0]
    assert "folds" not in json.loads((tmp_path / "a.json").read_text())


def test_fold_k_validates_on_k_and_trains_on_the_rest(root: Path, tmp_path: Path) -> None:
    out = prepare_dataset(root, tmp_path / "m.csv", folds=3, progress=False).manifest_path
    m = read_manifest(out)
    cfg = load_config(None, {"data.manifest": str(out), "data.fold": 1})
    train, valid = split_rows(cfg, m)
    assert set(valid.fold.tolist()) == {1}
    assert 1 not in set(train.fold.tolist()) and len(train) + len(valid) == len(m)
    assert training_rows(cfg, m).image == train.image  # what plan shows is what train reads
    assert fold_rows(m, 1, "x")[1].image == valid.image


def test_fold_refusals_name_the_fix(root: Path, tmp_path: Path, capsys) -> None:
    plain = prepare_dataset(root, tmp_path / "p.csv", progress=False).manifest_path
    folded = prepare_dataset(root, tmp_path / "f.csv", folds=2, progress=False).manifest_path
    cfg = load_config(None, {"data.manifest": str(plain), "data.fold": 0})
    with pytest.raises(UserError, match="prepare DATA_ROOT --folds K"):
        split_rows(cfg, read_manifest(plain))
    cfg = load_config(None, {"data.manifest": str(folded), "data.fold": 2})
    with pytest.raises(UserError, match=r"outside 0\.\.1"):
        split_rows(cfg, read_manifest(folded))
    work = tmp_path / "run"
    code = main(["train", str(folded), "--fold", "5", "--work-dir", str(work)])
    assert code == 2 and "--fold 5 is outside 0..1" in capsys.readouterr().err
    assert not work.exists()
    assert main(["prepare", str(root), "--out", str(tmp_path / "x.csv"), "--folds", "1"]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_plan_config_shows_the_fold_rows(root: Path, tmp_path: Path, capsys) -> None:
    out = prepare_dataset(root, tmp_path / "m.csv", folds=2, progress=False).manifest_path
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("data:\n  fold: 0\n")
    assert main(["plan", str(out), "--config", str(cfg_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    m = read_manifest(out)
    assert m.fold is not None
    expected = collections.Counter(np.asarray(m.group)[m.fold == 1].tolist())
    sizes = {entry["name"]: entry["images"] for entry in report["groups"]}
    assert sizes == {g: expected.get(g, 0) for g in sizes}
    assert report["rows"] == int(np.sum((m.fold >= 0) & (m.fold != 0)))
