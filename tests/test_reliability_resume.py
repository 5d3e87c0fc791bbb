"""Resume continues the same run or refuses: other rows, another split, another config."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from segbalance.cli import main
from segbalance.config import load_config
from segbalance.data.manifest import Manifest, read_manifest, write_manifest
from segbalance.train import train

TINY = {
    "data.image_size": 32,
    "data.epoch_length": 10,
    "model.decoder_filters": [16, 8, 8, 8, 8],
    "train.batch_size": 2,
    "train.epochs": 2,
    "train.precision": "float32",
    "augment.jit": False,  # XLA-compiling the augmentation costs more than it saves here
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, synth_manifest: Path) -> Path:
    """A private copy of the synthetic data (these tests rewrite its manifest)."""
    root = tmp_path_factory.mktemp("resume") / "data"
    shutil.copytree(synth_manifest.parent.parent, root)
    return root / synth_manifest.parent.name / synth_manifest.name


class Stop(Exception):
    """Raised by :class:`StopAtEpoch`, as a kill would end the run."""


class StopAtEpoch(keras.callbacks.Callback):
    """Ends the run when epoch ``epoch`` (from 0) begins: the one before it is checkpointed."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        if epoch == self.epoch:
            raise Stop


@pytest.fixture(scope="module")
def stopped_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after epoch 1 of 2 (as a kill after the checkpoint would leave it)."""
    work = tmp_path_factory.mktemp("runs") / "run"
    cfg = load_config(None, {**TINY, "data.manifest": str(data)})
    with pytest.raises(Stop):
        train(cfg, work, callbacks=[StopAtEpoch(1)])
    assert not (work / "metrics.json").exists()
    return work


@pytest.fixture
def edited(data: Path) -> Iterator[Callable[[Callable[[Manifest], Manifest]], None]]:
    """Rewrite the manifest through a function; the original comes back afterwards."""
    csv, side = data.read_bytes(), data.with_suffix(".json").read_bytes()

    def edit(change: Callable[[Manifest], Manifest]) -> None:
        write_manifest(change(read_manifest(data)), data)

    yield edit
    data.write_bytes(csv)
    data.with_suffix(".json").write_bytes(side)


def _drop_first_train_row(m: Manifest) -> Manifest:
    keep = np.array([i for i in range(len(m)) if i != m.split.index("train")])
    return m.take(keep)


def _train_row_to_valid(m: Manifest) -> Manifest:
    split = list(m.split)
    split[split.index("train")] = "valid"
    return dataclasses.replace(m, split=tuple(split))


def _other_mask_rule(m: Manifest) -> Manifest:
    # Same files, same sizes (the header check passes): only how a mask is read changed.
    rules = list(m.mask_rule)
    rules[0] = "gray>127"
    return dataclasses.replace(m, mask_rule=tuple(rules))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_drop_first_train_row, "train rows: "),
        (_train_row_to_valid, "valid rows: "),
        (_other_mask_rule, "same counts, other files, sizes or mask rules"),
    ],
    ids=["row-removed", "split-moved", "mask-rule-changed"],
)
def test_resume_on_changed_data_is_refused(
    change: Callable[[Manifest], Manifest],
    expected: str,
    stopped_run: Path,
    edited: Callable[[Callable[[Manifest], Manifest]], None],
    capsys: pytest.CaptureFixture,
) -> None:
    before = sorted(p.relative_to(stopped_run) for p in stopped_run.rglob("*"))
    edited(change)
    assert main(["train", "--work-dir", str(stopped_run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume must train on the data the run" in err and expected in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(stopped_run) for p in stopped_run.rglob("*")) == before


def test_resume_on_a_changed_config_is_refused(
    stopped_run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train", "--work-dir", str(stopped_run), "--resume", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr: 0.001 -> 0.5" in err and "Traceback" not in err


def test_resume_on_the_same_data_continues(stopped_run: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    shutil.copytree(stopped_run, work)
    assert main(["train", "--work-dir", str(work), "--resume"]) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2
    recorded = json.loads((work / "data.json").read_text())
    assert recorded["train"]["rows"] == sum(recorded["train"]["groups"].values())
