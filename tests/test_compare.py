"""segbalance compare: one run per strategy, same budget, a table, a figure, a verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segbalance.cli import main
from segbalance.compare import comparison_table, run_name, verdict
from segbalance.data.prepare import prepare_dataset
from segbalance.data.synth import generate

TINY = [
    "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--model", "unet-small",
    "--set", "data.epoch_length=8", "--set", "model.encoder_weights=none",
    "--set", "model.decoder_filters=[16, 8, 8, 8, 8]", "--bootstrap", "50",
    # XLA-compiling the augmentation costs ~4 s of CPU per run, more than it saves here.
    "--set", "augment.jit=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmp")
    generate(root, scale=0.03, size=32, seed=0, progress=False, workers=1)
    return prepare_dataset(root, progress=False, workers=1).manifest_path


def test_compare_two_strategies_then_reuses_them(manifest: Path, tmp_path: Path, capsys) -> None:
    work = tmp_path / "cmp"
    argv = [
        "compare",
        str(manifest),
        "--balance",
        "proportional",
        "adaptive",
        "--work-dir",
        str(work),
    ]
    assert main([*argv, *TINY]) == 0
    out = capsys.readouterr().out
    assert "best worst-group IoU:" in out and "worst group" in out
    summary = json.loads((work / "compare.json").read_text())
    assert summary["strategies"] == ["proportional", "adaptive"]
    assert summary["budget"]["epochs"] == 1 and summary["evaluated_on"]["split"] == "valid"
    for s in ("proportional", "adaptive"):
        assert (work / s / "metrics.json").is_file()
        group = next(iter(summary["results"][s]["groups"].values()))
        assert "iou_ci" in group
    assert (work / "compare.png").stat().st_size > 0
    # Not over a user's file of that name: refused before any run.
    other = tmp_path / "other"
    other.mkdir()
    (other / "compare.json").write_text("{}")
    mine = [*argv[:-1], str(other)]
    assert main([*mine, *TINY]) == 2 and "compare.json" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["compare.json"]
    # Again: finished runs are reused, nothing trains.
    assert main([*argv, *TINY]) == 0
    assert "[compare] resuming balance=proportional" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--balance", "uniform", "nonsense"], "nonsense"),
        (["--balance", "uniform", "uniform"], "twice"),
        (["--balance", "uniform", "--test", "missing.csv"], "missing.csv"),
        (["--balance", "uniform", "--bootstrap", "-1"], "--bootstrap"),
    ],
)
def test_bad_input_exit_2_nothing_written(
    manifest: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    work = tmp_path / "cmp"
    code = main(["compare", str(manifest), "--work-dir", str(work), *TINY, *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not work.exists()


def test_verdict_names_best_worst_group_and_cost_to_the_largest() -> None:
    def result(ious: dict[str, float]) -> dict:
        groups = {g: {"iou": v, "iou_ci": None, "images": 3} for g, v in ious.items()}
        values = list(ious.values())
        return {
            "groups": groups,
            "mean_group_iou": sum(values) / len(values),
            "worst_group_iou": min(values),
            "mean_group_iou_ci": None,
            "worst_group_iou_ci": None,
        }

    results = {
        "proportional": result({"0": 0.9, "1": 0.3}),
        "uniform": result({"0": 0.85, "1": 0.6}),
    }
    line = verdict(results, {"0": 100, "1": 5})
    assert line.startswith("best worst-group IoU: uniform 0.600")
    assert "largest group 0" in line and "-0.050" in line
    assert "uniform" in comparison_table(results, {"0": 100, "1": 5})
    assert run_name("adaptive:sqrt") == "adaptive-sqrt"


def test_balanced_dataset_refuses_adaptive(manifest: Path) -> None:
    from segbalance import balanced_dataset
    from segbalance.errors import UserError

    with pytest.raises(UserError, match="model.fit"):
        balanced_dataset(manifest, image_size=32, batch_size=2, balance="adaptive:sqrt")
