"""Files changed after prepare: train refuses before it builds anything, or names the file.

Each case damages one file of a prepared copy of the built-in data, runs ``train`` and
checks: exit 2, the file named on stderr, no traceback, and (when the header shows the
damage) no work dir at all.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbalance.cli import main
from segbalance.data.manifest import read_manifest

FLAGS = ["--image-size", "32", "--epochs", "1", "--batch-size", "2", "--precision", "float32"]
FLAGS += ["--set", "data.epoch_length=10", "--set", "model.decoder_filters=[16, 8, 8, 8, 8]"]


@pytest.fixture
def data(tmp_path: Path, synth_manifest: Path) -> Path:
    """A private copy of the prepared synthetic data: its manifest."""
    root = tmp_path / "data"
    shutil.copytree(synth_manifest.parent.parent, root)
    return root / synth_manifest.parent.name / synth_manifest.name


def _delete(path: Path) -> None:
    path.unlink()


def _resize(path: Path) -> None:
    with Image.open(path) as im:
        im.resize((im.width * 2, im.height)).save(path)


def _not_an_image(path: Path) -> None:
    path.write_bytes(b"this is not a PNG any more")


def _truncate(path: Path) -> None:
    # The header survives (it opens), the pixel data does not: only decoding finds it.
    data = path.read_bytes()
    path.write_bytes(data[: max(len(data) // 3, 64)])


@pytest.mark.parametrize(
    ("damage", "column", "said", "work_dir_made"),
    [
        (_delete, "image", "", False),
        (_delete, "mask", "", False),
        (_resize, "image", "but prepare recorded", False),
        (_not_an_image, "mask", "cannot be read any more", False),
        # A validation image: every valid row is read in epoch 1, while a train row may not
        # be in a 10-sample epoch at all.
        (_truncate, "image", "damaged or truncated", True),
    ],
    ids=["image-deleted", "mask-deleted", "image-resized", "mask-garbage", "image-truncated"],
)
def test_train_names_the_file_that_changed_after_prepare(
    damage: Callable[[Path], None],
    column: str,
    said: str,
    work_dir_made: bool,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    split = "valid" if damage is _truncate else "train"
    rows = read_manifest(data).select(split=split)
    victim = getattr(rows, column)[0]
    damage(rows.root / victim)
    work = tmp_path / "run"
    assert main(["train", str(data), "--work-dir", str(work), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert Path(victim).name in err and said in err, err
    assert "Traceback" not in err
    assert "segbalance prepare" in err  # what to do
    assert work.exists() == work_dir_made  # header damage is found before any write


def test_every_file_is_checked_before_training(data: Path) -> None:
    """The header check sees a damaged file anywhere, not only the first."""
    from segbalance.errors import InvalidDataError
    from segbalance.pipeline.verify import check_files

    rows = read_manifest(data)
    for name in (rows.mask[-1], rows.image[len(rows) // 2]):
        _not_an_image(rows.root / name)
    with pytest.raises(InvalidDataError) as err:
        check_files(rows, "m.csv")
    assert len(err.value.problems) == 2
    assert np.all([p.fix.startswith("re-run") for p in err.value.problems])


@pytest.mark.parametrize(
    ("damage", "said"),
    [(_delete, ""), (_resize, "but prepare recorded"), (_truncate, "damaged or truncated")],
    ids=["deleted", "resized", "truncated"],
)
def test_evaluate_names_the_file_that_changed_after_prepare(
    damage: Callable[[Path], None],
    said: str,
    data: Path,
    model_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    rows = read_manifest(data).select(split="valid")
    victim = rows.image[0]
    damage(rows.root / victim)
    out = tmp_path / "eval.json"
    argv = ["evaluate", str(model_file), str(data), "--split", "valid", "--json", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert Path(victim).name in err and said in err, err
    assert "Traceback" not in err and "segbalance prepare" in err
    assert not out.exists()


def test_decode_messages_are_plain_words() -> None:
    import tensorflow as tf

    from segbalance.pipeline.verify import plain

    raw = (
        "{{function_node __wrapped__DecodeImage_device_/job:localhost/replica:0/task:0/"
        "device:CPU:0}} Invalid PNG data, size 3615 [Op:DecodeImage] name: "
    )
    assert plain(tf.errors.InvalidArgumentError(None, None, raw)) == "Invalid PNG data, size 3615"


@pytest.mark.parametrize("command", ["stats", "plan"])
def test_a_data_folder_given_as_the_manifest_names_the_manifest_inside(
    command: str, data: Path, capsys: pytest.CaptureFixture
) -> None:
    root = data.parent.parent
    assert main([command, str(root)]) == 2
    err = capsys.readouterr().err
    assert f"manifest {root} is a folder" in err and str(data) in err
    assert "Traceback" not in err


def test_evaluate_on_a_data_folder_with_bad_pairs_says_to_prepare_it(
    data: Path, model_file: Path, capsys: pytest.CaptureFixture
) -> None:
    root = data.parent.parent
    rows = read_manifest(data)
    _not_an_image(rows.root / rows.mask[0])
    assert main(["evaluate", str(model_file), str(root)]) == 2
    err = capsys.readouterr().err
    assert f"Run 'segbalance prepare {root}'" in err and Path(rows.mask[0]).name in err
    assert "Traceback" not in err


def test_a_run_refused_before_its_first_step_leaves_no_work_dir(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. ImageNet weights that cannot be downloaded: the corrected retry must just run."""
    from segbalance.errors import UserError
    from segbalance.train import trainer

    def offline(*args: object, **kwargs: object) -> None:
        raise UserError("cannot get the imagenet weights (offline)")

    monkeypatch.setattr(trainer, "build_model", offline)
    work = tmp_path / "run"
    assert main(["train", str(data), "--work-dir", str(work), *FLAGS]) == 2
    assert "imagenet weights" in capsys.readouterr().err
    assert not work.exists()


def test_augment_groups_unknown_to_the_data_are_refused_before_any_write(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("augment:\n  groups:\n    '9': [{type: flip, p: 0.5}]\n")
    work = tmp_path / "run"
    argv = ["train", str(data), "--work-dir", str(work), "--config", str(config), *FLAGS]
    assert main(argv) == 2
    assert "augment.groups names group(s) 9" in capsys.readouterr().err
    assert not work.exists()
