"""Resuming runs: kill -9 mid-epoch then --resume, finished runs, changed configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segbalance.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from _mw_worker import latest_checkpoint

STEPS = 6  # data.epoch_length 12, batch 2
EVERY = 2  # mid-epoch checkpoints at steps 2 and 4 of each epoch


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segbalance.data.prepare import prepare_dataset
    from segbalance.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, scale=0.02, size=64, seed=0, progress=False, workers=1)
    return prepare_dataset(root, progress=False, workers=1).manifest_path


def _train_cmd(manifest: Path, work: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "segbalance",
        "train",
        str(manifest),
        "--work-dir",
        str(work),
        # Tiny: a training costs mostly its tracing, so steps and pixels are kept few.
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--model",
        "unet-small",
        "--set",
        f"data.epoch_length={2 * STEPS}",
        "--set",
        "model.encoder_weights=none",
        "--set",
        "model.decoder_filters=[16, 8, 8, 8, 8]",
        "--set",
        "augment.jit=false",  # XLA-compiling the augmentation costs more than it saves here
        "--set",
        f"train.checkpoint_every_steps={EVERY}",
        *extra,
    ]


def _epochs_in_history(work: Path) -> list[int]:
    with (work / "history.csv").open() as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


@pytest.mark.heavy
def test_kill9_during_epoch2_then_resume_finishes_every_epoch_once(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        _train_cmd(manifest, work),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Kill as soon as the first mid-epoch checkpoint of epoch 2 is complete.
    deadline = time.monotonic() + 240
    latest = None
    while time.monotonic() < deadline and proc.poll() is None:
        latest = latest_checkpoint(work)
        if latest is not None and latest > STEPS:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait()
    assert latest is not None and STEPS < latest < 2 * STEPS
    assert not (work / "metrics.json").exists()
    assert _epochs_in_history(work) == [1]

    # The resume in this process: a fresh interpreter would only add TensorFlow's import.
    code = main(["train", "--work-dir", str(work), "--resume"])
    resumed, err = capsys.readouterr()
    assert code == 0, resumed + err
    restored_step = _latest_step_in_log(resumed)
    assert restored_step >= EVERY and restored_step % EVERY == 0
    assert "epoch 1/2" not in resumed  # epoch 1 is not trained again
    assert _epochs_in_history(work) == [1, 2]
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and metrics["epochs_planned"] == 2
    assert (work / "best.keras").is_file()

    # A finished run is not retrained.
    stamp = (work / "history.csv").stat().st_mtime_ns, (work / "best.keras").stat().st_mtime_ns
    assert main(["train", "--work-dir", str(work), "--resume"]) == 0
    after = (work / "history.csv").stat().st_mtime_ns, (work / "best.keras").stat().st_mtime_ns
    assert after == stamp


def _latest_step_in_log(stdout: str) -> int:
    """The step of 'resuming from .../ckpt-N (epoch 2 step S)'."""
    for line in stdout.splitlines():
        if line.startswith("resuming from") and "(epoch 2 step " in line:
            return int(line.rsplit("step ", 1)[1].rstrip(")"))
    raise AssertionError("no 'resuming from ... epoch 2' line in:\n" + stdout)


def test_resume_with_a_changed_config_is_an_error(tmp_path: Path, capsys) -> None:
    work = tmp_path / "run"
    work.mkdir()
    (work / "config.yaml").write_text("data:\n  manifest: m.csv\ntrain:\n  epochs: 2\n")
    code = main(["train", "--work-dir", str(work), "--resume", "--epochs", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.epochs: 2 -> 5" in err


def test_resume_without_a_run_is_an_error(tmp_path: Path, capsys) -> None:
    code = main(["train", "--work-dir", str(tmp_path / "nothing"), "--resume"])
    assert code == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_and_overwrite_together_is_an_error(tmp_path: Path, manifest: Path, capsys) -> None:
    work = tmp_path / "run"
    work.mkdir()
    (work / "config.yaml").write_text(f"data:\n  manifest: {manifest}\n")
    code = main(["train", "--work-dir", str(work), "--resume", "--overwrite"])
    assert code == 2
    assert "exclude each other" in capsys.readouterr().err


def test_checkpoints_hold_the_dropout_seed_state(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    from segbalance.train.checkpoint import RunState, make_checkpoint, restore_latest

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5)(keras.layers.Dense(4)(inputs)))
    opt = keras.optimizers.SGD(0.1)
    opt.build(model.trainable_variables)
    state = RunState(0.1)
    checkpoint = make_checkpoint(model, opt, state)
    x = tf.ones((8, 4))
    model(x, training=True)
    state.set(epoch=3, step=5)
    checkpoint.save(str(tmp_path / "ckpt"))
    expected = model(x, training=True).numpy()  # the next dropout mask after the save
    model(x, training=True)
    state.set(epoch=0, step=0)
    assert restore_latest(checkpoint, tmp_path) is not None
    assert (state.get("epoch"), state.get("step")) == (3, 5)
    np.testing.assert_array_equal(model(x, training=True).numpy(), expected)
