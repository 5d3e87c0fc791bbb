"""``segbalance plan``: the table, --json, config layering and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segbalance.cli import main

SIZES = [749, 144, 126, 52, 34]
HEADER = "image,mask,group,split,height,width,coverage,mask_rule"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Tutorial-sized manifest: every 10th image of a group is in valid (no files needed)."""
    lines = [HEADER]
    for g, n in enumerate(SIZES):
        for i in range(n):
            split = "valid" if i % 10 == 0 else "train"
            lines.append(f"images/{g}/{i}.png,masks/{g}/{i}.png,{g},{split},64,64,0.1,0/255")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_json(capsys, *argv: str) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_groups_target_and_epoch_counts(manifest: Path, capsys) -> None:
    report = run_json(capsys, str(manifest), "--epochs", "3", "--batch-size", "16")
    train = [n - (n + 9) // 10 for n in SIZES]  # 674, 129, 113, 46, 30 -> 992
    assert [g["images"] for g in report["groups"]] == train
    assert report["target"] == {str(g): 0.2 for g in range(5)}
    assert report["epoch_length"] == 992 and report["steps_per_epoch"] == 62
    assert [e["epoch"] for e in report["epochs"]] == [0, 1, 2]
    for epoch in report["epochs"]:
        assert epoch["counts"] == report["quotas"]
        assert sum(epoch["counts"].values()) == 992


def test_epoch_length_is_rounded_up_to_whole_batches(manifest: Path, capsys) -> None:
    report = run_json(capsys, str(manifest), "--epoch-length", "100", "--batch-size", "16")
    assert report["epoch_length"] == 112 and report["steps_per_epoch"] == 7


def test_table_shows_each_group_and_each_epoch(manifest: Path, capsys) -> None:
    argv = [str(manifest), "--epochs", "2", "--batch-size", "8", "--epoch-length", "3000"]
    assert main(["plan", *argv]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("group"))
    assert lines[head].split() == [
        "group",
        "images",
        "target",
        "per",
        "epoch",
        "shown/image",
        "e0",
        "e1",
    ]
    row4 = lines[head + 5].split()
    assert row4[:4] == ["4", "30", "0.2000", "600.0"]
    assert row4[4:] == ["20.00", "!", "600", "600"]  # 600 / 30 images: flagged
    assert "over-fit" in err


def test_weights_custom_and_random_mode(manifest: Path, capsys) -> None:
    report = run_json(
        capsys,
        str(manifest),
        "--balance",
        "custom",
        "--weights",
        "0=1,4=2",
        "--mode",
        "random",
        "--epochs",
        "4",
        "--seed",
        "3",
    )
    assert report["target"]["4"] == pytest.approx(2 / 6)
    assert report["mode"] == "random" and report["seed"] == 3
    assert len({tuple(e["counts"].values()) for e in report["epochs"]}) > 1


def test_zero_weight_is_reported_as_a_warning(manifest: Path, capsys) -> None:
    report = run_json(capsys, str(manifest), "--weights", "4=0")
    assert report["target"]["4"] == 0.0
    assert any("weight 0" in w for w in report["warnings"])


def test_config_file_is_used_and_flags_override_it(manifest: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("sampling:\n  balance: proportional\ntrain:\n  epochs: 2\n  seed: 7\n")
    report = run_json(capsys, str(manifest), "--config", str(cfg))
    assert report["balance"] == "proportional" and report["seed"] == 7
    assert len(report["epochs"]) == 2
    report = run_json(capsys, str(manifest), "--config", str(cfg), "--balance", "sqrt")
    assert report["balance"] == "sqrt"


def test_many_epochs_are_summarised_as_min_max(manifest: Path, capsys) -> None:
    assert main(["plan", str(manifest), "--epochs", "12", "--mode", "random"]) == 0
    out = capsys.readouterr().out
    assert " min " in out and "over 12 epochs" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--balance", "balanced"], "unknown balance strategy 'balanced'"),
        (["--balance", "custom"], "balance 'custom' needs weights"),
        (["--weights", "0=1,,"], "must look like GROUP=WEIGHT"),
        (["--weights", "9=1"], "group '9', which does not exist; valid groups: 0, 1, 2, 3, 4"),
        (["--weights", "0=-2"], "weight of group '0' is -2.0"),
        (["--weights", "0=0,1=0,2=0,3=0,4=0"], "leaves no group to sample"),
        (["--split", "test"], "no rows in split 'test'; splits present: train, valid"),
        (["--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    manifest: Path, capsys, extra: list[str], message: str
) -> None:
    assert main(["plan", str(manifest), *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_manifest_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["plan", str(tmp_path / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
