"""``prepare --classes``, ``--mask-rule labels`` and ``--group-by rarest-class`` (in-process).

Masks are tiny (32 px) label maps drawn by hand, so every fraction and group is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import write_image
from PIL import Image

from segbalance.cli import main
from segbalance.data.class_groups import (
    class_rarity,
    rarest_class,
    rarest_class_groups,
    split_strata,
)
from segbalance.data.manifest import read_manifest
from segbalance.data.stats import compute_stats, format_stats_table

SIZE = 32
CLASSES = """classes:
  - {name: background, value: 0}
  - {name: nail, value: 1, color: [255, 0, 0]}
  - {name: skin, value: 2, color: [0, 255, 0]}
ignore: 255
"""


def _run(capsys, command: str, *argv: str | Path) -> tuple[int, str, str]:
    code = main([command, *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def label_mask(*squares: tuple[int, int, int, int]) -> np.ndarray:
    """A 32x32 label map: each square ``(value, row, col, side)`` painted in order."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for value, r, c, side in squares:
        mask[r : r + side, c : c + side] = value
    return mask


def add_pair(root: Path, rel: str, mask: np.ndarray | Image.Image, ext: str = ".png") -> Path:
    """Image ``root/Images/rel.png`` and its mask ``root/Masks/rel<ext>``."""
    write_image(root / "Images" / f"{rel}.png", seed=len(rel))
    path = root / "Masks" / f"{rel}{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    img = mask if isinstance(mask, Image.Image) else Image.fromarray(mask)
    img.save(path)
    return path


@pytest.fixture
def classes_file(tmp_path: Path) -> Path:
    path = tmp_path / "classes.yaml"
    path.write_text(CLASSES)
    return path


def _good_set(root: Path) -> None:
    """Four good pairs in group 0: nail 8x8 (64 px) in all, skin 4x4 (16 px) in two."""
    for i in range(4):
        squares = [(1, 0, 0, 8)] + ([(2, 20, 20, 4)] if i % 2 else [])
        add_pair(root, f"0/a{i}", label_mask(*squares))


def test_coverage_columns_round_trip_and_summary(tmp_path: Path, classes_file: Path, capsys):
    data = tmp_path / "data"
    _good_set(data)
    code, out, err = _run(capsys, "prepare", data, "--classes", classes_file, "--seed", "1")
    assert code == 0, err
    manifest = read_manifest(data / "segbalance" / "manifest.csv")
    assert manifest.classes is not None and manifest.classes.names == ["background", "nail", "skin"]
    assert manifest.class_coverage is not None and manifest.class_coverage.shape == (4, 3)
    by_image = dict(zip(manifest.image, manifest.class_coverage.tolist(), strict=True))
    assert by_image["Images/0/a1.png"] == [1 - 80 / 1024, 64 / 1024, 16 / 1024]
    assert by_image["Images/0/a0.png"] == [1 - 64 / 1024, 64 / 1024, 0.0]
    assert manifest.coverage.tolist() == [1 - c[0] for c in manifest.class_coverage.tolist()]
    assert set(manifest.mask_rule) == {"class-value"}
    side = json.loads((data / "segbalance" / "manifest.json").read_text())
    assert side["classes"]["ignore"] == 255 and side["classes_file"] == str(classes_file)
    # the summary counts the images containing each class per split
    lines = out.splitlines()
    table = lines[[line.startswith("class ") for line in lines].index(True) :]
    assert table[0].split() == ["class", "value", "train", "valid", "train", "pixels"]
    counts = {line.split()[0]: line.split()[2:4] for line in table[1:4]}
    train = manifest.select(split="train")
    assert train.class_coverage is not None
    skin_train = int((train.class_coverage[:, 2] > 0).sum())
    assert counts == {
        "background": ["3", "1"],
        "nail": ["3", "1"],
        "skin": [str(skin_train), str(2 - skin_train)],
    }


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (None, "does not exist"),
        ("classes: [\n", "cannot read classes file"),
        (
            "classes:\n  - {name: background, value: 0}\n  - {name: nail, value: 0}\n",
            "share the value 0",
        ),
        ("- background\n- nail\n", "must be a mapping"),
    ],
)
def test_classes_file_errors_name_the_file(tmp_path: Path, capsys, text, said) -> None:
    data = tmp_path / "data"
    _good_set(data)
    path = tmp_path / "my classes.yaml"
    if text is not None:
        path.write_text(text)
    code, _, err = _run(capsys, "prepare", data, "--classes", path)
    assert code == 2 and str(path) in err and said in err and "Traceback" not in err
    assert not (data / "segbalance").exists()


def test_classes_folder_is_named_as_a_folder(tmp_path: Path, classes_file: Path, capsys) -> None:
    _good_set(tmp_path / "data")
    code, _, err = _run(capsys, "prepare", tmp_path / "data", "--classes", tmp_path)
    assert code == 2 and "is a folder" in err and str(classes_file) in err


def test_unknown_values_and_jpeg_are_refused_with_the_file(tmp_path, classes_file, capsys):
    data = tmp_path / "data"
    _good_set(data)
    add_pair(data, "0/bad", label_mask((1, 0, 0, 8), (7, 10, 10, 3), (128, 20, 20, 3)))
    add_pair(data, "0/lossy", label_mask((1, 0, 0, 16), (2, 16, 16, 16)), ext=".jpg")
    add_pair(data, "0/broken", label_mask((1, 0, 0, 8)))
    broken = data / "Masks" / "0" / "broken.png"
    broken.write_bytes(broken.read_bytes()[:60])
    code, _, err = _run(capsys, "prepare", data, "--classes", classes_file)
    assert code == 2 and "no manifest written" in err
    assert not (data / "segbalance").exists()
    lines = {line.split()[0]: line for line in err.splitlines() if line.startswith("Masks/")}
    assert (
        "values 7, 128 are no class of " + str(classes_file) + " (0 background, 1 nail, 2 skin; "
        "ignore 255)" in lines["Masks/0/bad.png"]
    )
    assert "JPEG label mask" in lines["Masks/0/lossy.jpg"] and "PNG" in lines["Masks/0/lossy.jpg"]
    assert "re-export" in lines["Masks/0/broken.png"] or "damaged" in lines["Masks/0/broken.png"]
    # --skip-invalid leaves them out and writes the rest
    code, _, err = _run(capsys, "prepare", data, "--classes", classes_file, "--skip-invalid")
    assert code == 0 and len(read_manifest(data / "segbalance" / "manifest.csv")) == 4


def test_colour_masks_read_by_colour_palette_masks_by_index(tmp_path, classes_file, capsys):
    data = tmp_path / "data"
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[:8, :8] = (255, 0, 0)  # nail: 64 px
    rgb[20:24, 20:28] = (0, 255, 0)  # skin: 32 px
    add_pair(data, "0/colour", rgb)
    palette = Image.fromarray(label_mask((1, 0, 0, 4), (2, 8, 8, 8)))
    palette.putpalette([10, 20, 30, 0, 0, 250, 250, 250, 0] + [0] * (253 * 3))  # colours: noise
    add_pair(data, "0/palette", palette)
    code, _, err = _run(capsys, "prepare", data, "--classes", classes_file)
    assert code == 0, err
    manifest = read_manifest(data / "segbalance" / "manifest.csv")
    rows = {Path(i).stem: k for k, i in enumerate(manifest.image)}
    assert manifest.class_coverage is not None
    assert manifest.mask_rule[rows["colour"]] == "class-color"
    assert manifest.class_coverage[rows["colour"]].tolist() == [1 - 96 / 1024, 64 / 1024, 32 / 1024]
    assert manifest.mask_rule[rows["palette"]] == "class-value"
    assert manifest.class_coverage[rows["palette"]].tolist() == [
        1 - 80 / 1024,
        16 / 1024,
        64 / 1024,
    ]


def test_colour_mask_without_class_colours_says_what_to_add(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[:8, :8] = (255, 0, 0)
    add_pair(data, "0/colour", rgb)
    path = tmp_path / "c.yaml"
    path.write_text("classes:\n  - {name: background, value: 0}\n  - {name: nail, value: 1}\n")
    code, _, err = _run(capsys, "prepare", data, "--classes", path)
    assert code == 2 and "Masks/0/colour.png" in err and "color: [R, G, B]" in err


def test_rarest_class_rule_by_hand() -> None:
    # background, nail, skin, ring: shares nail 3/4, skin 2/4, ring 1/4 of 4 train images
    cover = np.array(
        [
            [0.9, 0.1, 0.0, 0.0],
            [0.8, 0.1, 0.1, 0.0],
            [0.7, 0.1, 0.1, 0.1],
            [1.0, 0.0, 0.0, 0.0],
            [0.5, 0.0, 0.0, 0.5],  # valid: ring only
        ]
    )
    train = np.array([True, True, True, True, False])
    rarity = class_rarity(cover, train)
    assert rarity[1:, 0].tolist() == [0.75, 0.5, 0.25]
    names = ["background", "nail", "skin", "ring"]
    assert rarest_class_groups(cover, names, rarity) == ["nail", "skin", "ring", "none", "ring"]
    folders = ["a", "a", "b", "b", "b"]
    joined = rarest_class_groups(cover, names, rarity, folders)
    assert joined == ["a/nail", "a/skin", "b/ring", "b/none", "b/ring"]
    # ties: equal image share -> lower pixel share wins, then the class listed later
    both = np.array([0.5, 0.2, 0.3])
    assert rarest_class(both, np.array([[1, 0], [0.5, 0.3], [0.5, 0.1]])) == 2
    assert rarest_class(both, np.array([[1, 0], [0.5, 0.1], [0.5, 0.3]])) == 1
    assert rarest_class(both, np.array([[1, 0], [0.5, 0.1], [0.5, 0.1]])) == 2
    assert rarest_class(np.array([1.0, 0.0, 0.0]), np.zeros((3, 2))) is None
    # the split's strata: the same groups with rarity over every image
    assert split_strata("rarest-class", cover, names, folders)[4] == "ring"
    assert split_strata("folder", cover, names, folders) == folders


def _layout_b(root: Path) -> None:
    """train/valid folders (the split is given): groups x and y, known class contents."""
    train = {
        "x/a": [(1, 0, 0, 4)],
        "x/b": [(1, 0, 0, 4)],
        "x/c": [(1, 0, 0, 4), (2, 10, 10, 4)],
        "y/d": [(1, 0, 0, 4), (2, 10, 10, 4)],
        "y/e": [(2, 10, 10, 4)],
        "y/f": [],
    }
    valid = {"x/g": [(2, 10, 10, 4)], "y/h": [(1, 0, 0, 4)]}
    for split, rows in (("train", train), ("valid", valid)):
        for rel, squares in rows.items():
            write_image(root / split / "images" / f"{rel}.png", seed=len(rel))
            path = root / split / "masks" / f"{rel}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(label_mask(*squares)).save(path)


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (
            "rarest-class",
            {"a": "nail", "b": "nail", "c": "skin", "d": "skin", "e": "skin", "f": "none"}
            | {"g": "skin", "h": "nail"},
        ),
        (
            "folder+rarest-class",
            {"a": "x/nail", "b": "x/nail", "c": "x/skin", "d": "y/skin", "e": "y/skin"}
            | {"f": "y/none", "g": "x/skin", "h": "y/nail"},
        ),
    ],
)
def test_group_by_rarest_class_on_a_known_set(tmp_path, classes_file, capsys, group_by, expected):
    _layout_b(tmp_path / "data")
    code, out, err = _run(
        capsys, "prepare", tmp_path / "data", "--classes", classes_file, "--group-by", group_by
    )
    assert code == 0, err
    manifest = read_manifest(tmp_path / "data" / "segbalance" / "manifest.csv")
    assert (
        dict(zip((Path(i).stem for i in manifest.image), manifest.group, strict=True)) == expected
    )
    assert "nail 67%, skin 50%" in out  # rarity on the 6 train images
    side = json.loads((tmp_path / "data" / "segbalance" / "manifest.json").read_text())
    assert side["group_by"] == group_by and side["class_rarity"] == {"nail": 4 / 6, "skin": 0.5}
    # plan reads the groups from the manifest
    code, out, err = _run(capsys, "plan", tmp_path / "data" / "segbalance" / "manifest.csv")
    assert code == 0, err
    assert all(g in out for g in set(expected.values()) - {"y/nail"})  # y/nail: valid only
    # stats: group x class table
    stats = compute_stats(manifest)
    assert stats["classes"] == ["background", "nail", "skin"]
    skin = {g: block["classes"]["skin"]["images"] for g, block in stats["groups"].items()}
    assert skin == {g: sum(v == g for v in expected.values()) if "skin" in g else 0 for g in skin}
    assert "images containing each class" in format_stats_table(stats)


def test_rarest_class_split_gives_every_class_group_valid_images(tmp_path, classes_file, capsys):
    data = tmp_path / "data"
    for i in range(12):  # one folder: 12 nail images, 3 with skin
        add_pair(data, f"0/n{i}", label_mask((1, 0, 0, 4)))
    for i in range(3):
        add_pair(data, f"0/s{i}", label_mask((1, 0, 0, 4), (2, 10, 10, 4)))
    for seed in range(3):
        code, _, err = _run(
            capsys, "prepare", data, "--classes", classes_file, "--group-by", "rarest-class",
            "--seed", seed,
        )  # fmt: skip
        assert code == 0, err
        manifest = read_manifest(data / "segbalance" / "manifest.csv")
        assert manifest.select(split="valid").counts() == {"nail": 2, "skin": 1}


def test_group_by_needs_classes_and_no_class_named_none(tmp_path, capsys) -> None:
    _good_set(tmp_path / "data")
    code, _, err = _run(capsys, "prepare", tmp_path / "data", "--group-by", "rarest-class")
    assert code == 2 and "--classes" in err
    path = tmp_path / "c.yaml"
    path.write_text("classes:\n  - {name: background, value: 0}\n  - {name: none, value: 1}\n")
    code, _, err = _run(
        capsys, "prepare", tmp_path / "data", "--classes", path, "--group-by", "rarest-class"
    )
    assert code == 2 and "'none'" in err and "rename" in err
    assert not (tmp_path / "data" / "segbalance").exists()


def test_classes_refuse_binary_mask_rules(tmp_path: Path, classes_file: Path, capsys) -> None:
    _good_set(tmp_path / "data")
    for flags in (("--mask-rule", "labels"), ("--mask-threshold", "3")):
        code, _, err = _run(capsys, "prepare", tmp_path / "data", "--classes", classes_file, *flags)
        assert code == 2 and flags[0] in err


def test_mask_rule_labels_reads_16_bit_instances_as_foreground(tmp_path: Path, capsys) -> None:
    data = tmp_path / "cells"
    for i in range(3):
        ids = np.zeros((SIZE, SIZE), np.uint16)
        ids[:4, :4] = 1 + i  # 16 px
        ids[10:14, 10:18] = 300 + 1000 * i  # 32 px
        ids[28:, 28:] = 65535  # 16 px
        write_image(data / "images" / f"c{i}.png", seed=i)
        (data / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(data / "masks" / f"c{i}.png")
    assert Image.open(data / "masks" / "c0.png").mode.startswith("I")
    code, _, err = _run(capsys, "prepare", data)
    assert code == 2 and "--mask-rule labels" in err  # the fix names the flag
    code, out, err = _run(capsys, "prepare", data, "--mask-rule", "labels")
    assert code == 0, err
    manifest = read_manifest(data / "segbalance" / "manifest.csv")
    assert set(manifest.mask_rule) == {"gray>0"} and manifest.classes is None
    assert manifest.coverage.tolist() == [64 / 1024] * 3
    assert "gray>0 x3" in out


def test_mask_rule_labels_refuses_jpeg_and_other_rules(tmp_path: Path, capsys) -> None:
    data = tmp_path / "cells"
    write_image(data / "images" / "c.png")
    (data / "masks").mkdir(parents=True)
    Image.fromarray(label_mask((3, 0, 0, 16), (9, 16, 16, 16))).save(data / "masks" / "c.jpg")
    code, _, err = _run(capsys, "prepare", data, "--mask-rule", "labels")
    assert code == 2 and "masks/c.jpg" in err and "JPEG label mask" in err and "PNG" in err
    code, _, err = _run(capsys, "prepare", data, "--mask-rule", "labels", "--mask-threshold", "1")
    assert code == 2 and "--mask-threshold" in err
