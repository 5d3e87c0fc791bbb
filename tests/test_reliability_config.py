"""Config files and flags as users write them: the evident meaning, or a refusal at load.

Every refusal: exit 2, the key (and value) named on stderr, no traceback, and nothing
written (no work dir). Every acceptance: the value means what it evidently means.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segbalance.cli import main

REFUSED = [
    # (config file text or None, flags, what stderr must name)
    ("train:\n  epochs: yes\n", [], "train.epochs=True: Value error, give a number"),
    ("train: 5\n", ["--epochs", "3"], "config section 'train' must be a mapping"),
    ("train: [1, 2]\n", ["--set", "train.seed=1"], "config section 'train' must be a mapping"),
    (None, ["--lr", "-1"], "optimizer.lr=-1.0: Input should be greater than 0"),
    (None, ["--lr", "nan"], "optimizer.lr=nan: Input should be a finite number"),
    (None, ["--set", "data.epoch_length=0"], "data.epoch_length=0: Input should be greater"),
    (None, ["--image-size", "100000"], "larger than 8192"),
    (None, ["--image-size", "0"], "multiples of 32"),
    (None, ["--set", "optimizer.plateau_factor=1.5"], "optimizer.plateau_factor=1.5"),
    (None, ["--set", "model.dropout=1"], "model.dropout=1"),
    (None, ["--set", "model.decoder_filters=[64, 0]"], "model.decoder_filters.1=0"),
    (None, ["--set", "train.threshold=1.0"], "train.threshold=1.0"),
    (None, ["--set", "train.batch_size=2.5"], "train.batch_size=2.5"),
    (None, ["--set", "distribute.worker_index=-1"], "distribute.worker_index=-1"),
    (None, ["--set", "sampling.weights=0=abc"], "0=abc"),
    ("sampling:\n  balance: uniformm\n", [], "unknown balance strategy 'uniformm'"),
    ("train:\n  epochs: 3\n  epoch: 2\n", [], "Did you mean 'epochs'"),
    ("augment:\n  default:\n    - {type: flipp}\n", [], "did you mean 'flip'"),
    ("data: {groups: [0, 4]\n", [], "cannot read config"),
]


@pytest.mark.parametrize(("text", "flags", "named"), REFUSED)
def test_refused_at_load_with_the_key_named_and_nothing_written(
    text: str | None, flags: list[str], named: str, tmp_path: Path, capsys
) -> None:
    argv = ["train", str(tmp_path / "manifest.csv"), "--work-dir", str(tmp_path / "run")]
    if text is not None:
        (tmp_path / "run.yaml").write_text(text)
        argv += ["--config", str(tmp_path / "run.yaml")]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert named in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


ACCEPTED = [
    # (config file text or None, flags, dotted key, the value it must have)
    ("data:\n  groups: [0, 4]\n", [], "data.groups", ["0", "4"]),
    (None, ["--set", "data.groups=[0, 1]"], "data.groups", ["0", "1"]),
    ("train:\n", ["--epochs", "3"], "train.epochs", 3),  # an empty section + its flag
    ("train:\n", [], "train.epochs", 20),  # an empty section: its defaults
    (None, ["--weights", "0=1,4=2"], "sampling.weights", {"0": 1.0, "4": 2.0}),
    ("sampling:\n  weights: {0: 1, 4: 2}\n", [], "sampling.weights", {"0": 1.0, "4": 2.0}),
    (None, ["--set", "train.early_stopping_patience=null"], "train.early_stopping_patience", None),
]


@pytest.mark.parametrize(("text", "flags", "key", "value"), ACCEPTED)
def test_accepted_with_its_evident_meaning(
    text: str | None, flags: list[str], key: str, value: object, tmp_path: Path, capsys
) -> None:
    argv = ["train", "--print-config"]
    if text is not None:
        (tmp_path / "run.yaml").write_text(text)
        argv += ["--config", str(tmp_path / "run.yaml")]
    assert main([*argv, *flags]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    section, name = key.split(".")
    assert printed[section][name] == value


def test_plan_refuses_the_same_values(tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "manifest.csv"  # never read: the config fails first
    assert main(["plan", str(manifest), "--epoch-length", "0"]) == 2
    assert "data.epoch_length=0" in capsys.readouterr().err
