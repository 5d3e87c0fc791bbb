"""``synth --classes``: the 3-class built-in set (a rare ring), and the binary set unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbalance.classes import load_classes
from segbalance.cli import main
from segbalance.data.manifest import read_manifest
from segbalance.data.synth import CLASSES_NAME, generate
from segbalance.data.synth_draw import RING_ODDS, render
from segbalance.errors import UserError

# render(g, 1, 48, 7) for g in 0..4, images and masks, as drawn before the classes existed:
# the binary set must stay byte-identical (a Pillow or numpy upgrade that changes blur or
# random streams would change it too; then re-pin after checking the pictures).
BINARY_DIGEST = "8043cc09e3610ff045526c4eff67c1d1b77b0bef9d4be3c385a4b09b682581ab"


def test_binary_render_is_unchanged() -> None:
    digest = hashlib.sha256()
    for g in "01234":
        image, mask = render(g, 1, 48, 7)
        digest.update(image.tobytes())
        digest.update(mask.tobytes())
    assert digest.hexdigest() == BINARY_DIGEST


@pytest.mark.parametrize("group", list("01234"))
def test_class_render_is_the_binary_photo_plus_rings(group: str) -> None:
    for index in range(6):
        image, mask = render(group, index, 64, 0)
        photo, labels = render(group, index, 64, 0, classes=True)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2}
        ring = labels == 2
        assert ((labels == 1) == (mask == 255))[~ring].all()  # nails as in the binary mask
        changed = (image != photo).any(axis=-1)
        if not ring.any():
            assert not changed.any()
        else:  # only around the ring (its band and shadow, blurred)
            ys, xs = np.nonzero(ring)
            near = np.zeros_like(ring)
            near[max(ys.min() - 8, 0) : ys.max() + 9, max(xs.min() - 8, 0) : xs.max() + 9] = True
            assert not changed[~near].any()


def test_rings_are_rare_and_live_in_the_small_groups() -> None:
    seen = {
        g: sum((render(g, i, 48, 0, classes=True)[1] == 2).any() for i in range(30))
        for g in RING_ODDS
    }
    assert seen["3"] >= 18 and seen["4"] >= 18  # most images of the small groups
    assert max(seen["0"], seen["1"], seen["2"]) <= 6  # few of the others


def test_synth_classes_writes_label_masks_that_prepare_accepts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "rings"
    args = ["synth", str(out), "--classes", "--scale", "0.02", "--size", "48", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"--classes {out / CLASSES_NAME} --group-by rarest-class" in printed
    spec = load_classes(out / CLASSES_NAME)
    assert spec.names == ["background", "nail", "ring"] and spec.values == [0, 1, 2]
    masks = sorted((out / "Masks").rglob("*.png"))
    values = set()
    for path in masks:
        with Image.open(path) as img:
            assert img.mode == "L"
            values |= set(np.unique(np.asarray(img)).tolist())
    assert values == {0, 1, 2}
    info = json.loads((out / "synth.json").read_text())
    assert info["classes_file"] == CLASSES_NAME and sum(info["ring_images"].values()) > 0
    code = main(
        ["prepare", str(out), "--classes", str(out / CLASSES_NAME), "--group-by", "rarest-class"]
    )
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(out / "segbalance" / "manifest.csv")
    assert set(manifest.groups) <= {"nail", "ring", "none"} and "ring" in manifest.groups
    assert manifest.counts()["ring"] == sum(info["ring_images"].values())


def test_synth_classes_never_replaces_a_users_classes_file(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / CLASSES_NAME).write_text("mine")
    with pytest.raises(UserError, match=CLASSES_NAME):
        generate(out, scale=0.02, size=32, progress=False, classes=True)
    assert (out / CLASSES_NAME).read_text() == "mine"
    generate(out, scale=0.02, size=32, progress=False)  # binary: it leaves the file alone
    assert (out / CLASSES_NAME).read_text() == "mine"
    with pytest.raises(UserError, match="did not write"):
        generate(out, scale=0.02, size=32, progress=False, overwrite=True, classes=True)


def test_overwrite_switches_between_binary_and_classes(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate(out, scale=0.02, size=32, progress=False, classes=True)
    assert (out / CLASSES_NAME).is_file()
    generate(out, scale=0.02, size=32, progress=False, overwrite=True)
    assert not (out / CLASSES_NAME).exists()  # the old set's classes file would mislead
    info = json.loads((out / "synth.json").read_text())
    assert "classes_file" not in info and "ring_images" not in info
    mask = np.asarray(Image.open(next((out / "Masks" / "0").glob("*.png"))))
    assert set(np.unique(mask).tolist()) <= {0, 255}


@pytest.mark.parametrize("classes", [True, False])
def test_overwrite_keeps_a_classes_file_the_user_edited(tmp_path: Path, classes: bool) -> None:
    out = tmp_path / "d"
    generate(out, scale=0.02, size=32, progress=False, classes=True)
    edited = (out / CLASSES_NAME).read_text().replace("ring", "band")
    (out / CLASSES_NAME).write_text(edited)
    with pytest.raises(UserError, match="changed since synth wrote it"):
        generate(out, scale=0.02, size=32, progress=False, overwrite=True, classes=classes)
    assert (out / CLASSES_NAME).read_text() == edited
