"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1, kill -9, resume, bad clusters.

Every subprocess has a deadline and is killed with SIGKILL on the way out (TensorFlow
catches SIGTERM), so nothing here can hang CI.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segbalance.cli import main

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _mw_worker import free_ports, latest_checkpoint  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
BATCH, EVERY = 4, 2  # as in _mw_worker.TINY / --every
RUN_FILES = {
    ".segbalance",
    "config.yaml",
    "data.json",
    "checkpoints",
    "best.keras",
    "history.csv",
    "logs",
    "metrics.json",
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segbalance.data.prepare import prepare_dataset
    from segbalance.data.synth import generate

    root = tmp_path_factory.mktemp("mwdata")
    generate(root, scale=0.02, size=64, seed=0, progress=False, workers=1)
    return prepare_dataset(root, progress=False, workers=1).manifest_path


def _start(manifest: Path, work: Path, workers: str, index: int, out: Path, *extra: str):
    cmd = [sys.executable, str(HERE / "_mw_worker.py"), "worker", "--manifest", str(manifest)]
    cmd += ["--work-dir", str(work), "--workers", workers, "--index", str(index)]
    cmd += ["--out", str(out), "--every", str(EVERY), "--timeout", "90", *extra]
    log = out.with_suffix(".log").open("a")
    return subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent)


def _cluster(tmp_path: Path) -> str:
    return ",".join(f"127.0.0.1:{p}" for p in free_ports(2))


def _wait_all(procs: list[subprocess.Popen], outs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for proc, out in zip(procs, outs, strict=True):
            rc = proc.wait(max(1.0, deadline - time.monotonic()))
            assert rc == 0, out.with_suffix(".log").read_text()[-4000:]
    finally:
        for proc in procs:
            proc.kill()


def _plan(manifest: Path, epoch_length: int):
    """The global plan the loop builds (uniform, exact, seed 3), built independently."""
    from segbalance.data.manifest import read_manifest
    from segbalance.sampling import SamplingPlan

    train = read_manifest(manifest).select(split="train")
    return SamplingPlan(train.group_ids, train.groups, seed=3, epoch_length=epoch_length)


def _check_epoch_reads(reads: list[list[dict]], manifest: Path) -> None:
    """Worker w reads array_split(batch positions, 2)[w] of every global batch: nothing else."""
    from segbalance.data.manifest import read_manifest
    from segbalance.sampling import training_epoch_length

    rows = len(read_manifest(manifest).select(split="train"))
    length = training_epoch_length(rows, None, BATCH)
    plan = _plan(manifest, length).epoch(0)
    firsts = [next(r for r in worker if r["epoch"] == 0) for worker in reads]
    union = np.sort(np.concatenate([r["positions"] for r in firsts]))
    np.testing.assert_array_equal(union, np.arange(length))  # each position exactly once
    for w, shard in enumerate(firsts):
        expected = np.concatenate(
            [np.array_split(np.arange(s, s + BATCH), 2)[w] for s in range(0, length, BATCH)]
        )
        np.testing.assert_array_equal(shard["positions"], expected)
        np.testing.assert_array_equal(shard["indices"], plan[expected])


@pytest.mark.heavy
def test_two_workers_share_the_plan_agree_and_resume_after_kill9(
    manifest: Path, tmp_path: Path
) -> None:
    from segbalance.data.manifest import read_manifest
    from segbalance.sampling import training_epoch_length

    rows = len(read_manifest(manifest).select(split="train"))
    steps = training_epoch_length(rows, None, BATCH) // BATCH
    work = tmp_path / "run"
    outs = [tmp_path / f"w{i}.json" for i in range(2)]
    workers = _cluster(tmp_path)
    procs = [_start(manifest, work, workers, i, outs[i]) for i in range(2)]
    # Kill both as soon as a mid-epoch checkpoint of epoch 2 is complete.
    deadline, latest = time.monotonic() + 240, None
    try:
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            latest = latest_checkpoint(work)
            if latest is not None and latest > steps:
                break
            time.sleep(0.02)
        alive = [p.poll() is None for p in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)
    assert all(alive), outs[0].with_suffix(".log").read_text()[-4000:]
    assert latest is not None and steps < latest < 2 * steps
    assert not (work / "metrics.json").exists()

    reads = [
        [json.loads(line) for line in out.with_suffix(".reads.jsonl").read_text().splitlines()]
        for out in outs
    ]
    _check_epoch_reads(reads, manifest)

    # Resume both (new ports: the cluster may move on resume).
    workers = _cluster(tmp_path)
    procs = [_start(manifest, work, workers, i, outs[i], "--resume") for i in range(2)]
    _wait_all(procs, outs, timeout=300)
    results = [json.loads(out.read_text()) for out in outs]
    assert [r["epochs_completed"] for r in results] == [2, 2]
    assert [r["replicas"] for r in results] == [2, 2]
    assert all(r["reads"][0]["epoch"] == 1 for r in results)  # epoch 1 not read again
    chief_w, worker_w = (np.load(out.with_suffix(".npz")) for out in outs)
    assert len(chief_w.files) == len(worker_w.files) > 10
    differ = [k for k in chief_w.files if not np.array_equal(chief_w[k], worker_w[k])]
    # BN statistics included: the loop synchronises BN over replicas (Keras 3 would not).
    assert not differ, f"weights {differ} differ between the workers"
    assert results[0]["digest"] == results[1]["digest"]
    # A worker that restored another step than the chief is named (shared work dir check).
    for r in results:
        assert r["disagreement"].startswith("worker 1 has epoch and step [2, 1] but the chief")

    # Only the chief wrote artifacts; the worker's temporary checkpoints are gone.
    assert {p.name for p in work.iterdir()} == RUN_FILES
    assert not [p for p in work.rglob("*") if ".worker-" in str(p)]
    assert not [p for p in (work / "checkpoints").iterdir() if p.is_dir()]
    with (work / "history.csv").open() as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["replicas"] == 2


@pytest.mark.heavy
def test_a_worker_that_never_starts_fails_within_the_timeout(
    manifest: Path, tmp_path: Path
) -> None:
    chief, missing = free_ports(2)
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "segbalance", "train", str(manifest), "--work-dir", str(work)]
    cmd += ["--workers", f"127.0.0.1:{chief},127.0.0.1:{missing}", "--worker-index", "0"]
    cmd += ["--set", "distribute.connect_timeout_s=1"]  # the wait is all this test costs
    # A hang would hit the subprocess timeout; elapsed time is not asserted (shared machines).
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"worker 1 at 127.0.0.1:{missing} did not answer within 1 s" in done.stderr
    assert not work.exists()  # nothing half-written


@pytest.mark.heavy
def test_a_port_that_answers_without_a_worker_behind_it_ends_the_wait(
    manifest: Path, tmp_path: Path
) -> None:
    """The probe passes (something listens) but TensorFlow never forms the cluster."""
    chief, impostor = free_ports(2)
    cmd = [sys.executable, "-m", "segbalance", "train", str(manifest)]
    cmd += ["--work-dir", str(tmp_path / "run")]
    cmd += ["--workers", f"127.0.0.1:{chief},127.0.0.1:{impostor}", "--worker-index", "0"]
    cmd += ["--set", "distribute.connect_timeout_s=1"]  # the wait is all this test costs
    with socket.create_server(("127.0.0.1", impostor)):
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    # Killed by its watchdog: TensorFlow holds the process in C++ and ignores SIGTERM.
    assert done.returncode == -9, done.stdout + done.stderr
    assert f"127.0.0.1:{impostor}" in done.stderr
    assert "did not form within 1 s although every port answered" in done.stderr


def test_worker_index_out_of_range_is_a_user_error(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", str(manifest), "--work-dir", str(tmp_path / "run")]
    argv += ["--workers", "127.0.0.1:1,127.0.0.1:2", "--worker-index", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--worker-index 2 is out of range for 2 worker(s)" in err and "valid: 0..1" in err
