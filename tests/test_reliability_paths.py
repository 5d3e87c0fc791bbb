"""Paths from outside the program: the tutorial's own CSVs (prepare) and edited manifests.

Every case runs the CLI in-process and checks the exit code, that stderr names the file,
row or value, that no traceback leaks, and what exists on disk afterwards.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from _data_helpers import layout_a, write_image, write_mask

from segbalance.cli import main
from segbalance.data.manifest import read_manifest, sidecar_path


def _run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# --- family 4: the tutorial's CSVs as its data_processing.py writes them -----------------
#
# It globs <data>/train/images/**/*.png and strips "<data>/train/images" by replacement, so
# values keep a leading separator; pandas' to_csv adds an unnamed index column; train.csv has
# a train column of 1/0 and train<g>.csv files add a type column.

NAMES = {"1": ["first_image", "second_image"], "2": ["third_image"]}


def _masks_of(images: str) -> str:
    return images[: -len("images")] + ("Masks" if images.endswith("Images") else "masks")


def _tutorial(root: Path, images: str = "train/images", sep: str = "/") -> Path:
    """Images and masks under ``images`` (masks beside it), and the tutorial's CSVs."""
    masks = _masks_of(images)
    rows = []
    for group, names in NAMES.items():
        for name in names:
            write_image(root / images / group / f"{name}.png")
            write_mask(root / masks / group / f"{name}.png")
            rows.append((f"{sep}{group}{sep}{name}.png", group))
    csv_dir = root / "csv_file"
    csv_dir.mkdir(parents=True)
    train_flags = {rows[0][0]: 1, rows[1][0]: 0, rows[2][0]: 1}
    lines = [",images,train"] + [f"{i},{v},{train_flags[v]}" for i, (v, _g) in enumerate(rows)]
    (csv_dir / "train.csv").write_text("\n".join(lines) + "\n")
    for group in NAMES:
        mine = [(v, g) for v, g in rows if g == group]
        lines = [",images,train,type"]
        lines += [f"{i},{v},{train_flags[v]},{g}" for i, (v, g) in enumerate(mine)]
        (csv_dir / f"train{group}.csv").write_text("\n".join(lines) + "\n")
    return root


EXPECTED = [
    ("{i}/1/first_image.png", "1", "train"),
    ("{i}/1/second_image.png", "1", "valid"),
    ("{i}/2/third_image.png", "2", "train"),
]


@pytest.mark.parametrize(
    ("images", "sep"),
    [("train/images", "/"), ("images", "/"), ("Images", "\\"), ("train/images", "./")],
    ids=["train-images-slash", "images-slash", "Images-backslash", "dot-slash"],
)
def test_tutorial_csvs_as_written_are_accepted(
    tmp_path: Path, capsys, images: str, sep: str
) -> None:
    root = _tutorial(tmp_path, images, "/" if sep == "./" else sep)
    if sep == "./":  # ./1/a.png: rewrite train.csv's values
        text = (root / "csv_file/train.csv").read_text().replace(",/", ",./")
        (root / "csv_file/train.csv").write_text(text)
    code, out, err = _run(capsys, "prepare", root)
    assert code == 0, err
    manifest = read_manifest(root / "segbalance/manifest.csv")
    got = sorted(zip(manifest.image, manifest.group, manifest.split, strict=True))
    assert got == [(i.format(i=images), g, s) for i, g, s in EXPECTED]
    assert manifest.mask[0].startswith(_masks_of(images) + "/1/")
    assert "layout: d:" in out and "in no CSV" not in out


def test_tutorial_csvs_with_allow_outside_root_read_the_same(tmp_path: Path, capsys) -> None:
    # before: every '/1/a.png' row was read as a literal absolute path and "did not exist"
    root = _tutorial(tmp_path / "data")
    code, _out, err = _run(capsys, "prepare", root, "--allow-outside-root")
    assert code == 0, err
    manifest = read_manifest(root / "segbalance/manifest.csv")
    assert manifest.image[0] == "train/images/1/first_image.png"
    meta = json.loads(sidecar_path(root / "segbalance/manifest.csv").read_text())
    assert meta["allow_outside_root"] is True


def _outside_file(root: Path) -> Path:
    return write_image(root.parent / "outside" / "secret.png").absolute()


def _symlink_out(root: Path) -> str:
    target = _outside_file(root)
    write_mask(root / "train/masks/1/link.png")
    os.symlink(target, root / "train/images/1/link.png")
    return "/1/link.png"


# value written into train.csv line 3 (or how to make it), and what stderr must name
BAD_ROWS: dict[str, tuple[Callable[[Path], str], str]] = {
    "dotdot-after-folder": (lambda r: "1/../../etc/passwd", "climbs out of the image folder"),
    "leading-slash-dotdot": (lambda r: "/../../outside/secret.png", "climbs out"),
    "backslash-dotdot": (lambda r: "\\..\\..\\outside\\secret.png", "climbs out"),
    "absolute-outside": (lambda r: str(_outside_file(r)), "absolute path"),
    "windows-drive": (lambda r: "C:\\data\\train\\images\\1\\first_image.png", "absolute path"),
    "symlink-out": (_symlink_out, "outside the data root through a symlink"),
    "missing": (lambda r: "/1/nope.png", "does not exist"),
    "train-flag": (lambda r: "", "train value 'maybe' is not 1 or 0"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS), ids=list(BAD_ROWS))
def test_tutorial_row_outside_or_wrong_is_refused(tmp_path: Path, capsys, case: str) -> None:
    root = _tutorial(tmp_path / "data")
    make, message = BAD_ROWS[case]
    value = make(root)
    lines = (root / "csv_file/train.csv").read_text().splitlines()
    if case == "train-flag":
        lines[2] = lines[2].rsplit(",", 1)[0] + ",maybe"
        value = "maybe"
    else:
        lines[2] = f'1,"{value}",0'
    (root / "csv_file/train.csv").write_text("\n".join(lines) + "\n")
    code, _out, err = _run(capsys, "prepare", root)
    assert code == 2
    assert "csv_file/train.csv:3" in err and value in err and message in err, err
    assert not (root / "segbalance").exists()
    # --skip-invalid lists the row and keeps the rest (second_image is still in train1.csv)
    code, _out, err = _run(capsys, "prepare", root, "--skip-invalid")
    assert code == 0, err
    with open(root / "segbalance/manifest_rejects.csv", newline="") as fh:
        rejects = list(csv.DictReader(fh))
    assert len(rejects) == 1 and message in rejects[0]["problem"]
    manifest = read_manifest(root / "segbalance/manifest.csv")
    assert len(manifest) == 3 and not any(".." in p or "secret" in p for p in manifest.image)


def test_symlinked_file_leaving_the_root_is_refused_in_any_layout(tmp_path: Path, capsys) -> None:
    root = layout_a(tmp_path / "data", {"0": 2})
    (root / "Images/0/img1.png").unlink()
    os.symlink(_outside_file(root), root / "Images/0/img1.png")
    code, _out, err = _run(capsys, "prepare", root)
    assert code == 2 and "Images/0/img1.png" in err and "symlink" in err
    assert not (root / "segbalance").exists()
    code, _out, err = _run(capsys, "prepare", root, "--allow-outside-root")
    assert code == 0, err
    assert len(read_manifest(root / "segbalance/manifest.csv")) == 2  # the sidecar allows it


# --- family 5: a manifest is input too ---------------------------------------------------


def _edited(synth_manifest: Path, folder: Path, row: int, value: str, col: str = "image") -> Path:
    """A copy of the synthetic manifest (same data root) whose ``row`` has ``col`` = value."""
    with open(synth_manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[row][col] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    root = read_manifest(synth_manifest, check_files=False).root
    sidecar_path(path).write_text(json.dumps({"root": str(root)}))
    return path


BAD_VALUES = {
    "absolute": ("/etc/passwd", "is absolute"),
    "dotdot": ("../../etc/passwd", "climbs out of the data root"),
    "dotdot-after-normalising": ("Images/0/../../../etc/passwd", "climbs out"),
    "windows-backslash": ("..\\..\\etc\\passwd", "climbs out"),
    "windows-drive": ("C:\\Windows\\win.ini", "is absolute"),
    "windows-root": ("\\1\\a.png", "is absolute"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES), ids=list(BAD_VALUES))
@pytest.mark.parametrize("col", ["image", "mask"])
def test_manifest_path_outside_root_is_refused(
    synth_manifest: Path, tmp_path: Path, capsys, case: str, col: str
) -> None:
    value, message = BAD_VALUES[case]
    path = _edited(synth_manifest, tmp_path, 1, value, col)
    out_json = tmp_path / "stats.json"
    code, _out, err = _run(capsys, "stats", path, "--json", out_json)
    assert code == 2
    assert f"{path}:3" in err and value in err and message in err and "segbalance prepare" in err
    assert not out_json.exists()


def _cmd_stats(path: Path, tmp: Path) -> tuple[list[str], Path]:
    return ["stats", str(path), "--json", str(tmp / "s.json")], tmp / "s.json"


def _cmd_plan(path: Path, tmp: Path) -> tuple[list[str], Path]:
    return ["plan", str(path)], tmp / "nothing"


def _cmd_train(path: Path, tmp: Path) -> tuple[list[str], Path]:
    return ["train", str(path), "--work-dir", str(tmp / "w"), "--epochs", "1"], tmp / "w"


def _cmd_evaluate(path: Path, tmp: Path) -> tuple[list[str], Path]:
    # evaluate checks the model file first, so a real one is needed to reach the data
    argv = ["evaluate", str(tmp / "model.keras"), str(path), "--json", str(tmp / "e.json")]
    return argv, tmp / "e.json"


COMMANDS = {
    "stats": _cmd_stats,
    "plan": _cmd_plan,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
}


@pytest.mark.parametrize("command", list(COMMANDS), ids=list(COMMANDS))
def test_every_manifest_reader_refuses_an_escaping_row(
    synth_manifest: Path, model_file: Path, tmp_path: Path, capsys, command: str
) -> None:
    shutil.copy(model_file, tmp_path / "model.keras")
    path = _edited(synth_manifest, tmp_path / "in", 4, "../../../etc/passwd")
    argv, written = COMMANDS[command](path, tmp_path)
    code, _out, err = _run(capsys, *argv)
    assert code == 2
    assert f"{path}:6" in err and "../../../etc/passwd" in err and "climbs out" in err
    assert not written.exists()


def test_manifest_symlink_leaving_root_is_refused_unless_sidecar_allows(
    tmp_path: Path, capsys
) -> None:
    root = layout_a(tmp_path / "data", {"0": 2, "1": 2})
    assert _run(capsys, "prepare", root)[0] == 0
    manifest = root / "segbalance/manifest.csv"
    # swapped for a link after prepare: the manifest's text is unchanged, its file is not
    (root / "Images/1/img0.png").unlink()
    os.symlink(_outside_file(root), root / "Images/1/img0.png")
    code, _out, err = _run(capsys, "stats", manifest)
    assert code == 2 and f"{manifest}:4" in err and "Images/1/img0.png" in err
    assert "symlink" in err
    meta = json.loads(sidecar_path(manifest).read_text())
    assert meta["allow_outside_root"] is False
    meta["allow_outside_root"] = True  # as prepare --allow-outside-root records it
    sidecar_path(manifest).write_text(json.dumps(meta))
    assert _run(capsys, "stats", manifest)[0] == 0


def test_manifest_same_image_spelled_twice_is_refused(
    synth_manifest: Path, tmp_path: Path, capsys
) -> None:
    first = read_manifest(synth_manifest, check_files=False).image[0]
    path = _edited(synth_manifest, tmp_path, 1, f"./{first}")
    code, _out, err = _run(capsys, "plan", path)
    assert code == 2 and f"{path}:3" in err and "already listed on line 2" in err


def test_manifest_accepts_dot_segments_that_stay_inside(
    synth_manifest: Path, tmp_path: Path, capsys
) -> None:
    first = read_manifest(synth_manifest, check_files=False).image[0]
    folder = first.split("/")[0]
    path = _edited(synth_manifest, tmp_path, 0, f"{folder}/../{first}")
    code, _out, err = _run(capsys, "stats", path)
    assert code == 0, err


def test_a_semicolon_separated_manifest_is_named_as_such(
    synth_manifest: Path, tmp_path: Path, capsys
) -> None:
    """Excel in a comma-decimal locale saves 'CSV' with semicolons."""
    text = synth_manifest.read_text().replace(",", ";")
    edited = tmp_path / "m.csv"
    edited.write_text(text)
    code, _out, err = _run(capsys, "stats", edited)
    assert code == 2 and "separated by semicolons" in err and str(edited) in err
