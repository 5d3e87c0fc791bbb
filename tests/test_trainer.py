"""The trainer seen through Keras callbacks, and `plan` showing exactly what `train` samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import pytest
import yaml

from segbalance.cli import main
from segbalance.config import load_config
from segbalance.data.manifest import read_manifest
from segbalance.train import train

TINY = {
    "data.image_size": 32,
    "data.epoch_length": 8,
    "model.name": "unet-small",
    "model.decoder_filters": [16, 8, 8, 8, 8],
    "train.batch_size": 2,
    "train.epochs": 2,
    "train.precision": "float32",
}


class Events(keras.callbacks.Callback):
    """Records every hook call, the epoch logs and the groups each epoch read."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[str, int | None]] = []
        self.epoch_logs: list[dict[str, Any]] = []
        self.batch_logs: list[dict[str, Any]] = []
        self.mix: list[dict[str, int]] = []
        self.stop_after = stop_after

    def on_train_begin(self, logs: Any = None) -> None:
        self.calls.append(("train_begin", None))

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.calls.append(("epoch_begin", epoch))
        trainer = self.params["trainer"]
        _, indices = trainer.epoch_reads(epoch, 0, 1, 0)  # what one input pipeline reads
        groups = [trainer.train_rows.group[i] for i in indices]
        self.mix.append({g: groups.count(g) for g in trainer.groups})

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.calls.append(("batch_begin", batch))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.calls.append(("batch_end", batch))
        self.batch_logs.append(dict(logs))

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.calls.append(("epoch_end", epoch))
        self.epoch_logs.append(dict(logs))
        if self.stop_after is not None and epoch + 1 >= self.stop_after:
            self.model.stop_training = True

    def on_train_end(self, logs: Any = None) -> None:
        self.calls.append(("train_end", None))


def test_callbacks_see_every_hook_in_order(synth_manifest: Path, tmp_path: Path) -> None:
    events = Events()
    cfg = load_config(None, {**TINY, "data.manifest": str(synth_manifest)})
    result = train(cfg, tmp_path / "run", callbacks=[events])
    steps = 4  # 8 samples per epoch in batches of 2
    expected: list[tuple[str, int | None]] = [("train_begin", None)]
    for epoch in range(2):
        expected.append(("epoch_begin", epoch))
        for step in range(steps):
            expected += [("batch_begin", step)]
            # Results are read one step late: step s ends after step s+1 began.
            if step:
                expected += [("batch_end", step - 1)]
        expected += [("batch_end", steps - 1), ("epoch_end", epoch)]
    expected.append(("train_end", None))
    assert events.calls == expected
    # Epoch logs are the history rows; batch logs carry the running mean of step losses.
    assert [log["epoch"] for log in events.epoch_logs] == [1, 2]
    for log, row in zip(events.epoch_logs, result.history, strict=True):
        assert log["val_iou"] == pytest.approx(row["val_iou"], rel=1e-5)
        assert log["loss"] == pytest.approx(row["loss"], rel=1e-5)
    first = events.batch_logs[:steps]
    running = sum(b["step_loss"] for b in first) / steps
    assert first[-1]["loss"] == pytest.approx(running, rel=1e-6)
    assert events.epoch_logs[0]["loss"] == pytest.approx(running, rel=1e-5)


def test_a_callback_can_end_the_run(synth_manifest: Path, tmp_path: Path) -> None:
    cfg = load_config(None, {**TINY, "data.manifest": str(synth_manifest), "train.epochs": 3})
    result = train(cfg, tmp_path / "run", callbacks=[Events(stop_after=1)])
    assert result.epochs_completed == 1
    assert result.metrics["stopped_early"] is True
    # The stop is recorded in the checkpoint: a resume finds the run complete.
    again = train(cfg, tmp_path / "run", resume=True)
    assert again.already_complete and again.epochs_completed == 1


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"sampling": {"sample_weights": True}},
        {"data": {"groups": [0, 4]}},  # unquoted numbers, as users write them
        {"data": {"groups": ["4", "1"]}, "sampling": {"balance": "sqrt", "weights": {"4": 2}}},
    ],
    ids=["uniform", "sample-weights", "groups", "groups-custom-weights"],
)
def test_plan_shows_what_train_samples(
    extra: dict[str, Any], synth_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "run.yaml"
    tree: dict[str, Any] = {
        "data": {"epoch_length": 8, "image_size": 32},
        "train": {"batch_size": 2, "epochs": 2, "precision": "float32"},
        "model": {"decoder_filters": [16, 8, 8, 8, 8]},
    }
    for section, values in extra.items():
        tree.setdefault(section, {}).update(values)
    config.write_text(yaml.safe_dump(tree))
    assert main(["plan", str(synth_manifest), "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    events = Events()
    cfg = load_config(config, {"data.manifest": str(synth_manifest)})
    result = train(cfg, tmp_path / "run", callbacks=[events])
    shown = [e["counts"] for e in report["epochs"]]
    assert shown == events.mix  # every epoch, every group: plan == what train read
    assert report["target"] == pytest.approx(result.metrics["target_mix"])
    assert report["steps_per_epoch"] == result.metrics["steps_per_epoch"]
    if "groups" in extra.get("data", {}):
        wanted = {str(g) for g in extra["data"]["groups"]}
        assert set(events.mix[0]) == wanted == {g["name"] for g in report["groups"]}
    if extra.get("sampling", {}).get("sample_weights"):
        rows = read_manifest(synth_manifest).select(split="train")
        natural = {g: n / len(rows) for g, n in rows.counts().items()}
        assert report["balance"] == "proportional"  # the loss weights carry the balance
        assert report["target"] == pytest.approx(natural)
