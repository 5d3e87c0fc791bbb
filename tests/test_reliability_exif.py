"""Phone photos as viewers show them: EXIF orientation in prepare, training decode and predict.

A phone stores the sensor's pixels (here 64 wide, 32 tall) and an EXIF Orientation tag
(6: turn 90 degrees clockwise to view), so the photo is seen 32 wide and 64 tall and masks
are drawn on that. Every stage must read the turned photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from _data_helpers import layout_a
from PIL import Image, ImageOps

from segbalance.cli import main
from segbalance.data.manifest import read_manifest
from segbalance.pipeline.decode import decode_image, decode_pair

SENSOR = (32, 64)  # height, width as stored


def phone_photo(path: Path, orientation: int = 6, seed: int = 0) -> np.ndarray:
    """Save a JPEG with an EXIF orientation; return the pixels as a viewer shows them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*SENSOR, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as saved:
        return np.asarray(ImageOps.exif_transpose(saved))


def drawn_mask(path: Path, height: int, width: int) -> None:
    """A mask drawn on a photo of this (displayed) size: its top quarter."""
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 4] = 255
    Image.fromarray(mask).save(path)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Three ordinary pairs per group plus one phone photo in group 1."""
    root = layout_a(tmp_path / "data", {"0": 3, "1": 3})
    phone_photo(root / "Images/1/phone.jpg")
    drawn_mask(root / "Masks/1/phone.png", height=64, width=32)  # on the displayed photo
    return root


def test_prepare_records_the_displayed_size(data: Path, capsys) -> None:
    assert main(["prepare", str(data)]) == 0
    rows = read_manifest(data / "segbalance/manifest.csv")
    i = rows.image.index("Images/1/phone.jpg")
    assert (rows.height[i], rows.width[i]) == (64, 32)
    assert rows.coverage[i] == pytest.approx(0.25)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_training_decoder_turns_the_photo_as_pil_does(orientation: int, tmp_path: Path) -> None:
    shown = phone_photo(tmp_path / "p.jpg", orientation)
    decoded = decode_image(tf.constant(str(tmp_path / "p.jpg"))).numpy()
    assert decoded.shape == shown.shape
    # Same JPEG, two decoders: equal up to the IDCT's rounding.
    assert np.abs(decoded - shown.astype(np.float32)).mean() < 3.0


def test_image_and_mask_line_up_in_training(data: Path, capsys) -> None:
    assert main(["prepare", str(data)]) == 0
    image, mask = decode_pair(
        tf.constant(str(data / "Images/1/phone.jpg")),
        tf.constant(str(data / "Masks/1/phone.png")),
        (64, 32),
    )
    assert image.shape == (64, 32, 3)
    assert float(tf.reduce_mean(mask[:16])) == 1.0 and float(tf.reduce_max(mask[16:])) == 0.0


def test_a_mask_of_the_unturned_pixels_is_refused_naming_the_orientation(
    data: Path, capsys
) -> None:
    drawn_mask(data / "Masks/1/phone.png", height=32, width=64)  # the sensor's size
    assert main(["prepare", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Masks/1/phone.png" in err and "EXIF orientation" in err
    assert "do not resize" in err and "Traceback" not in err
    assert not (data / "segbalance").exists()


def test_swapped_sizes_without_exif_say_so(tmp_path: Path, capsys) -> None:
    root = layout_a(tmp_path / "data", {"0": 2})
    Image.fromarray(np.zeros((64, 32, 3), np.uint8)).save(root / "Images/0/tall.png")
    drawn_mask(root / "Masks/0/tall.png", height=32, width=64)
    assert main(["prepare", str(root)]) == 2
    err = capsys.readouterr().err
    assert "height and width are swapped" in err and "Masks/0/tall.png" in err


def test_predict_writes_masks_at_the_displayed_size(
    model_file: Path, tmp_path: Path, capsys
) -> None:
    phone_photo(tmp_path / "in/phone.jpg")
    assert (
        main(["predict", str(model_file), str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 0
    )
    masks = list((tmp_path / "o/masks").rglob("*.png"))
    assert len(masks) == 1
    with Image.open(masks[0]) as mask:
        assert mask.size == (32, 64)  # width, height as viewers show the photo


def test_the_manifest_records_the_orientation_and_training_reads_it(data: Path, capsys) -> None:
    from segbalance.pipeline.dataset import build_eval_dataset

    assert main(["prepare", str(data)]) == 0
    manifest = data / "segbalance/manifest.csv"
    assert "orientation" in manifest.read_text().splitlines()[0]
    rows = read_manifest(manifest)
    i = rows.image.index("Images/1/phone.jpg")
    assert rows.orientation[i] == 6 and set(rows.orientation.tolist()) == {1, 6}
    one = rows.take([i])
    batch = next(iter(build_eval_dataset(one, image_size=(64, 32), batch_size=1)))
    assert float(tf.reduce_mean(batch["mask"][0, :16])) == 1.0  # mask and photo line up


def test_a_manifest_without_phone_photos_has_no_orientation_column(tmp_path: Path, capsys) -> None:
    root = layout_a(tmp_path / "data", {"0": 2, "1": 2})
    assert main(["prepare", str(root)]) == 0
    header = (root / "segbalance/manifest.csv").read_text().splitlines()[0]
    assert header == "image,mask,group,split,height,width,coverage,mask_rule"


def test_a_mask_with_an_exif_orientation_is_refused(data: Path, capsys) -> None:
    mask = np.zeros((32, 64), np.uint8)
    mask[:8] = 255
    image = Image.fromarray(mask)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(data / "Masks/1/phone.png", exif=exif.tobytes())
    assert main(["prepare", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Masks/1/phone.png" in err and "EXIF orientation" in err and "Traceback" not in err
