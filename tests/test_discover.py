"""Discovery of pairs in layouts a-d, pairing across extensions, and the mask encodings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import layout_a, square_mask, write_image, write_mask, write_pair
from PIL import Image

from segbalance.data.check import check_pair, check_pairs
from segbalance.data.discover import SINGLE_GROUP, discover
from segbalance.data.mask_rules import MaskError, mask_foreground
from segbalance.errors import UserError


def _pairs(found) -> list[tuple[str, str, str, str | None]]:
    root = found.root
    return sorted(
        (
            p.image.relative_to(root).as_posix(),
            p.mask.relative_to(root).as_posix(),
            p.group,
            p.split,
        )
        for p in found.pairs
    )


def test_layout_a_case_insensitive_and_ignored_files(tmp_path: Path) -> None:
    layout_a(tmp_path, {"0": 2, "10": 1}, images="IMAGES", masks="masks")
    for junk in ("IMAGES/0/.DS_Store", "IMAGES/0/Thumbs.db", "masks/notes.txt"):
        (tmp_path / junk).write_text("x")
    found = discover(tmp_path)
    assert found.layout.startswith("a:")
    assert _pairs(found) == [
        ("IMAGES/0/img0.png", "masks/0/img0.png", "0", None),
        ("IMAGES/0/img1.png", "masks/0/img1.png", "0", None),
        ("IMAGES/10/img0.png", "masks/10/img0.png", "10", None),
    ]
    assert sorted(found.ignored) == ["IMAGES/0/.DS_Store", "IMAGES/0/Thumbs.db", "masks/notes.txt"]
    assert found.rejects == []


def test_layout_b_split_folders_with_and_without_groups(tmp_path: Path) -> None:
    for split in ("Train", "valid"):
        write_pair(tmp_path / "grouped", f"{split}/images/g1/a.png", f"{split}/MASKS/g1/a.png")
        write_pair(tmp_path / "flat", f"{split}/Images/a.jpg", f"{split}/masks/a.png")
    grouped = discover(tmp_path / "grouped")
    assert grouped.layout.startswith("b:")
    assert [(g, s) for *_, g, s in _pairs(grouped)] == [("g1", "train"), ("g1", "valid")]
    flat = discover(tmp_path / "flat")
    assert [(g, s) for *_, g, s in _pairs(flat)] == [
        (SINGLE_GROUP, "train"),
        (SINGLE_GROUP, "valid"),
    ]


def test_layout_b_split_folders_inside_images(tmp_path: Path) -> None:
    write_pair(tmp_path, "images/train/3/a.png", "masks/train/3/a.png")
    write_pair(tmp_path, "images/val/3/b.png", "masks/val/3/b.png")
    found = discover(tmp_path)
    assert [(g, s) for *_, g, s in _pairs(found)] == [("3", "train"), ("3", "valid")]


def test_layout_c_one_group_or_groups_csv(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_pair(tmp_path, f"images/{name}.png", f"masks/{name}.png")
    assert {p.group for p in discover(tmp_path).pairs} == {SINGLE_GROUP}
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\na.png,left\nimages/b.png,right\nc,left\n")
    found = discover(tmp_path, groups_csv=groups)
    assert {p.image.name: p.group for p in found.pairs} == {
        "a.png": "left",
        "b.png": "right",
        "c.png": "left",
    }
    groups.write_text("image,group\na.png,left\n")
    partial = discover(tmp_path, groups_csv=groups)
    assert sorted(r.image for r in partial.rejects) == ["images/b.png", "images/c.png"]
    assert all("--groups CSV" in r.problem.problem for r in partial.rejects)


def test_tutorial_csvs_give_split_and_groups(tmp_path: Path) -> None:
    layout_a(tmp_path, {"0": 3, "1": 2})
    csv_dir = tmp_path / "csv_file"
    csv_dir.mkdir()
    (csv_dir / "train.csv").write_text("images\n0/img0.png\n0/img1.png\n1/img0.png\n")
    (csv_dir / "valid.csv").write_text("images\n0/img2.png\n1/img1.png\n")
    # train0.csv names the group of a path without a group folder would have; here it agrees
    (csv_dir / "train0.csv").write_text("images\n0/img0.png\n0/img1.png\n")
    (csv_dir / "readme.txt").write_text("not a split file")
    found = discover(tmp_path)
    assert found.layout.startswith("d:")
    assert [(i, g, s) for i, _m, g, s in _pairs(found)] == [
        ("Images/0/img0.png", "0", "train"),
        ("Images/0/img1.png", "0", "train"),
        ("Images/0/img2.png", "0", "valid"),
        ("Images/1/img0.png", "1", "train"),
        ("Images/1/img1.png", "1", "valid"),
    ]
    assert found.rejects == [] and "csv_file/readme.txt" in found.ignored


def test_tutorial_group_from_file_name_and_conflicts(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_pair(tmp_path, f"Images/{name}.png", f"Masks/{name}.png")
    csv_dir = tmp_path / "csv_file"
    csv_dir.mkdir()
    (csv_dir / "train2.csv").write_text("images\na.png\n")
    (csv_dir / "train7.csv").write_text("images\nb.jpg\n")  # other extension: matched by stem
    (csv_dir / "valid2.csv").write_text("images\nc.png\na.png\n")  # a.png in two splits
    found = discover(tmp_path)
    assert [(i, g, s) for i, _m, g, s in _pairs(found)] == [
        ("Images/b.png", "7", "train"),
        ("Images/c.png", "2", "valid"),
    ]
    assert len(found.rejects) == 1 and "valid2.csv:3" in found.rejects[0].problem.file
    assert "split train vs valid" in found.rejects[0].problem.problem


def test_tutorial_csvs_point_into_split_folders_with_a_train_column(tmp_path: Path) -> None:
    # as the tutorial's data_processing.py writes them: "/<g>/<name>", pandas index, train 1/0
    for name in ("a", "b"):
        write_pair(tmp_path, f"train/images/1/{name}.png", f"train/masks/1/{name}.png")
    write_pair(tmp_path, "valid/images/1/c.png", "valid/masks/1/c.png")
    csv_dir = tmp_path / "csv_file"
    csv_dir.mkdir()
    (csv_dir / "train.csv").write_text(",images,train\n0,/1/a.png,1\n1,\\1\\b.png,0\n")
    (csv_dir / "train1.csv").write_text(",images,train,type\n0,/1/a.png,1,1\n")
    (csv_dir / "valid.csv").write_text("images\n/1/c.png\n")  # its own split folder first
    found = discover(tmp_path)
    assert found.layout.startswith("d:") and found.rejects == []
    assert _pairs(found) == [
        ("train/images/1/a.png", "train/masks/1/a.png", "1", "train"),
        ("train/images/1/b.png", "train/masks/1/b.png", "1", "valid"),
        ("valid/images/1/c.png", "valid/masks/1/c.png", "1", "valid"),
    ]


def test_pairing_across_extensions_and_mask_suffix(tmp_path: Path) -> None:
    write_image(tmp_path / "Images/0/a.jpg")
    write_mask(tmp_path / "Masks/0/a.png")
    write_image(tmp_path / "Images/0/b.TIF")
    write_mask(tmp_path / "Masks/0/b.bmp")
    write_image(tmp_path / "Images/0/c.jpeg")
    write_mask(tmp_path / "Masks/0/c_mask.tiff")
    found = discover(tmp_path)
    assert [(i, m) for i, m, *_ in _pairs(found)] == [
        ("Images/0/a.jpg", "Masks/0/a.png"),
        ("Images/0/b.TIF", "Masks/0/b.bmp"),
        ("Images/0/c.jpeg", "Masks/0/c_mask.tiff"),
    ]
    results = check_pairs(
        [(str(p.image), str(p.mask)) for p in found.pairs], [("i", "m")] * 3, workers=2
    )
    assert [r.problems for r in results] == [(), (), ()]
    assert [r.coverage for r in results] == [64 / 1024] * 3


def test_two_images_with_one_stem_are_rejected(tmp_path: Path) -> None:
    write_pair(tmp_path, "Images/0/a.png")
    write_image(tmp_path / "Images/0/a.jpg")
    found = discover(tmp_path)
    assert found.pairs == []
    assert sorted(r.image for r in found.rejects) == ["Images/0/a.jpg", "Images/0/a.png"]


@pytest.mark.timeout(20)
def test_symlink_loop_terminates(tmp_path: Path) -> None:
    layout_a(tmp_path, {"0": 2})
    os.symlink(tmp_path / "Images/0", tmp_path / "Images/0/loop")
    os.symlink("..", tmp_path / "Masks/0/up")
    found = discover(tmp_path)
    assert len(found.pairs) == 2 and found.rejects == []
    assert any("already scanned" in n for n in found.notes)


def test_unknown_layout_and_missing_root(tmp_path: Path) -> None:
    (tmp_path / "pictures").mkdir()
    with pytest.raises(UserError, match="no known layout"):
        discover(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        discover(tmp_path / "nope")


# --- mask encodings: hand-made arrays, exact coverage and rule names ----------------------


def _rgb(mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    out[mask > 0] = color
    return out


def _palette(foreground: np.ndarray, color: tuple[int, int, int]) -> Image.Image:
    """A 2-entry palette mask: index 0 black (background), index 1 ``color``.

    Built explicitly: ``quantize(2)`` orders its palette as it likes, and a palette whose
    index 0 is the colour is (rightly) refused as ambiguous.
    """
    image = Image.fromarray(foreground.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, *color])
    return image


@pytest.mark.parametrize(
    ("image", "coverage", "rule"),
    [
        (Image.fromarray(square_mask(value=255)), 64 / 1024, "0/255"),
        (Image.fromarray(square_mask(value=1)), 64 / 1024, "0/1"),
        (Image.fromarray(np.zeros((32, 32), np.uint8)), 0.0, "0/255"),
        (Image.fromarray(np.full((32, 32), 255, np.uint8)), 1.0, "0/255"),
        (Image.fromarray(square_mask(side=16)).convert("1"), 256 / 1024, "0/255"),
        (Image.fromarray(square_mask(side=4)).convert("LA"), 16 / 1024, "0/255"),
        (Image.fromarray(_rgb(square_mask(), (200, 0, 0))), 64 / 1024, "rgb-nonblack"),
        (
            Image.fromarray(_rgb(square_mask(), (0, 0, 9))).convert("RGBA"),
            64 / 1024,
            "rgb-nonblack",
        ),
        (_palette(square_mask() > 0, (255, 0, 0)), 64 / 1024, "palette-nonblack"),
        (Image.fromarray(square_mask().astype(np.uint16) * 257), 64 / 1024, "0/255"),
        (Image.fromarray((square_mask() > 0).astype(np.uint16)), 64 / 1024, "0/1"),
    ],
    ids=[
        "0-255",
        "0-1",
        "empty",
        "full",
        "1bit",
        "LA",
        "rgb",
        "rgba",
        "palette",
        "16bit",
        "16bit-0-1",
    ],
)
def test_mask_encodings_coverage_and_rule(image: Image.Image, coverage: float, rule: str) -> None:
    fg, got_rule = mask_foreground(image)
    assert fg.dtype == bool and float(fg.mean()) == coverage and got_rule == rule


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(np.array([[0, 37], [255, 0]], np.uint8)),
        Image.fromarray(_rgb(np.array([[0, 37], [255, 0]]), (1, 1, 1)) * np.uint8(37)),
        Image.fromarray(np.array([[0, 300], [65535, 0]], np.uint16)),
        Image.fromarray(np.zeros((2, 2), np.float32)),
    ],
    ids=["gray-0-37-255", "gray-as-rgb", "16bit-3-values", "float"],
)
def test_non_binary_masks_are_refused_with_a_fix(image: Image.Image) -> None:
    with pytest.raises(MaskError) as err:
        mask_foreground(image)
    assert err.value.fix


def test_check_pair_reports_every_problem_with_file_names(tmp_path: Path) -> None:
    img = write_image(tmp_path / "i.png")
    small = write_mask(tmp_path / "m.png", np.zeros((16, 16), np.uint8))
    res = check_pair(str(img), str(small), ("I.png", "M.png"))
    assert not res.ok and res.problems[0].file == "M.png" and "16x16" in res.problems[0].problem
    capped = check_pair(str(img), str(img), ("I.png", "I.png"), max_pixels=500)
    assert [p.file for p in capped.problems] == ["I.png", "I.png"]
    assert "pixel cap" in capped.problems[0].problem


def test_groups_csv_outside_layout_c_is_refused(tmp_path: Path) -> None:
    layout_a(tmp_path, {"0": 1})
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\nimg0.png,x\n")
    with pytest.raises(UserError, match="--groups is for layout"):
        discover(tmp_path, groups_csv=groups)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims a huge size (a decompression bomb never needs decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [9_000, 20_000], ids=["over-our-cap", "over-PIL-limit"])
def test_decompression_bomb_is_refused_without_decoding(tmp_path: Path, side: int) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", side, side)
    mask = write_mask(tmp_path / "m.png")
    res = check_pair(str(bomb), str(mask), ("bomb.png", "m.png"))
    assert [p.file for p in res.problems] == ["bomb.png"]
    assert "pixel cap" in res.problems[0].problem
