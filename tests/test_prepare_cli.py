"""``segbalance prepare`` end to end (in-process): manifests, summaries and the bad-input table."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _data_helpers import layout_a, square_mask, write_image, write_mask, write_pair

from segbalance.cli import main
from segbalance.data.manifest import read_manifest
from segbalance.data.prepare import prepare_dataset

GOOD = {"0": 3, "1": 2}  # every bad-input case adds its fault to these five good pairs


def _run(capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main(["prepare", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_layout_a_writes_checked_manifest_and_summary(tmp_path: Path, capsys) -> None:
    layout_a(tmp_path, {"0": 10, "2": 3, "10": 1})
    code, out, err = _run(capsys, tmp_path, "--seed", "3")
    assert code == 0, err
    manifest = read_manifest(tmp_path / "segbalance" / "manifest.csv")
    assert manifest.groups == ["0", "2", "10"]
    assert manifest.counts() == {"0": 10, "2": 3, "10": 1}
    assert set(manifest.coverage.tolist()) == {64 / 1024}
    assert set(manifest.height.tolist()) == {32} and set(manifest.mask_rule) == {"0/255"}
    valid = manifest.select(split="valid").counts()
    assert valid == {"0": 2, "2": 1, "10": 0}  # round(10*0.2), >= 1 for n >= 2, none for n = 1
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["0"] == ["10", "8", "2", "0"] and lines["10"] == ["1", "1", "0", "0"]
    assert lines["total"] == ["14", "11", "3", "0"]


def test_split_is_reproducible_by_seed_and_workers(tmp_path: Path, capsys) -> None:
    layout_a(tmp_path, {"0": 12, "1": 5})
    texts = []
    for seed, workers in ((0, 1), (0, 2), (1, 2)):
        out = tmp_path / f"m{seed}{workers}.csv"
        assert _run(capsys, tmp_path, "--seed", seed, "--workers", workers, "--out", out)[0] == 0
        texts.append(out.read_text())
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_out_elsewhere_reads_back_through_sidecar(tmp_path: Path, capsys) -> None:
    data = layout_a(tmp_path / "data", GOOD)
    out = tmp_path / "runs" / "nails.csv"
    assert _run(capsys, data, "--out", out, "--valid-fraction", "0.5")[0] == 0
    manifest = read_manifest(out)
    assert manifest.root == data.absolute()
    assert all(Path(p).is_file() for p in manifest.image_paths() + manifest.mask_paths())
    assert manifest.select(split="valid").counts() == {"0": 2, "1": 1}


def test_layout_b_keeps_the_folder_split(tmp_path: Path, capsys) -> None:
    for split, n in (("train", 3), ("valid", 1)):
        for i in range(n):
            write_pair(tmp_path, f"{split}/images/g/{i}.png", f"{split}/masks/g/{i}.png")
    assert _run(capsys, tmp_path, "--valid-fraction", "0.9")[0] == 0
    rows = _rows(tmp_path / "segbalance" / "manifest.csv")
    assert [r["split"] for r in rows] == ["train", "train", "train", "valid"]


def test_prepare_dataset_api_and_stale_rejects(tmp_path: Path) -> None:
    layout_a(tmp_path, GOOD)
    write_image(tmp_path / "Images/0/lonely.png")
    result = prepare_dataset(tmp_path, skip_invalid=True, progress=False)
    assert result.rejects_path is not None and result.rejects_path.is_file()
    assert "lonely.png" in result.summary_table()
    (tmp_path / "Images/0/lonely.png").unlink()
    clean = prepare_dataset(tmp_path, skip_invalid=True, progress=False)
    assert clean.rejects_path is None and not result.rejects_path.exists()
    assert len(clean.manifest) == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--valid-fraction", "1.5"], "valid-fraction"), (["--workers", "0"], "--workers")],
)
def test_bad_flags_exit_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    layout_a(tmp_path, GOOD)
    code, _out, err = _run(capsys, tmp_path, *argv)
    assert code == 2 and message in err


def test_unknown_layout_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    code, _out, err = _run(capsys, tmp_path)
    assert code == 2 and "no known layout" in err and str(tmp_path) in err


def test_pixel_cap_refuses_large_images(tmp_path: Path, capsys) -> None:
    layout_a(tmp_path, {"0": 1})
    code, _out, err = _run(capsys, tmp_path, "--max-pixels", "500")
    assert code == 2 and "pixel cap" in err and "Images/0/img0.png" in err
    assert not (tmp_path / "segbalance").exists()


# --- the bad-input table ----------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _gray_0_37_255() -> np.ndarray:
    mask = square_mask()
    mask[-1, :] = 37  # an anti-aliased edge, say
    return mask


def _abs_tutorial(root: Path) -> None:
    (root / "csv_file").mkdir()
    outside = (root / "Images/1/img1.png").absolute()
    (root / "csv_file/train.csv").write_text(f"images\n0/img0.png\n{outside}\n")


def _escaping_tutorial(root: Path) -> None:
    (root / "csv_file").mkdir()
    (root / "csv_file/valid.csv").write_text("images\n1/img0.png\n../../elsewhere/x.png\n")


BadCase = tuple[Callable[[Path], object], str, set[tuple[str, str]]]

BAD: dict[str, BadCase] = {
    "missing-mask": (
        lambda r: write_image(r / "Images/0/lonely.png"),
        "Images/0/lonely.png",
        {("Images/0/lonely.png", "")},
    ),
    "mask-without-image": (
        lambda r: write_mask(r / "Masks/1/orphan.png"),
        "Masks/1/orphan.png",
        {("", "Masks/1/orphan.png")},
    ),
    "zero-byte-file": (
        lambda r: (write_image(r / "Images/0/e.png"), (r / "Masks/0/e.png").write_bytes(b"")),
        "Masks/0/e.png",
        {("Images/0/e.png", "Masks/0/e.png")},
    ),
    "truncated-png": (
        lambda r: (write_pair(r, "Images/1/cut.png"), _truncate(r / "Images/1/cut.png")),
        "Images/1/cut.png",
        {("Images/1/cut.png", "Masks/1/cut.png")},
    ),
    "size-mismatch": (
        lambda r: (
            write_image(r / "Images/0/w.png"),
            write_mask(r / "Masks/0/w.png", np.zeros((32, 40), np.uint8)),
        ),
        "Masks/0/w.png",
        {("Images/0/w.png", "Masks/0/w.png")},
    ),
    "mask-0-37-255": (
        lambda r: (
            write_image(r / "Images/1/g.jpg"),
            write_mask(r / "Masks/1/g.png", _gray_0_37_255()),
        ),
        "Masks/1/g.png",
        {("Images/1/g.jpg", "Masks/1/g.png")},
    ),
    "broken-symlink": (
        lambda r: (
            os.symlink(r / "gone.png", r / "Images/0/dead.png"),
            write_mask(r / "Masks/0/dead.png"),
        ),
        "Images/0/dead.png",
        {("Images/0/dead.png", "Masks/0/dead.png")},
    ),
    "empty-group-folder": (
        lambda r: ((r / "Images/5").mkdir(), (r / "Masks/5").mkdir()),
        "Images/5/",
        {("Images/5/", "")},
    ),
    "absolute-path-in-tutorial-csv": (
        _abs_tutorial,
        "csv_file/train.csv:3",
        set(),  # filled in by the test: the absolute path itself
    ),
    "dotdot-path-in-tutorial-csv": (
        _escaping_tutorial,
        "csv_file/valid.csv:3",
        {("../../elsewhere/x.png", "")},
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_table(tmp_path: Path, capsys, case: str) -> None:
    build, name, expected = BAD[case]
    layout_a(tmp_path, GOOD)
    build(tmp_path)
    if case == "absolute-path-in-tutorial-csv":
        expected = {(str((tmp_path / "Images/1/img1.png").absolute()), "")}
    code, out, err = _run(capsys, tmp_path)
    assert code == 2, out
    assert name in err and "no manifest written" in err
    assert not (tmp_path / "segbalance").exists()  # nothing half-written either

    code, out, err = _run(capsys, tmp_path, "--skip-invalid")
    assert code == 0, err
    rejects = _rows(tmp_path / "segbalance" / "manifest_rejects.csv")
    assert {(r["image"], r["mask"]) for r in rejects} == expected
    assert all(r["problem"] and r["fix"] for r in rejects)
    manifest = read_manifest(tmp_path / "segbalance" / "manifest.csv")
    kept = len(manifest)
    assert kept == (1 if "tutorial" in case else 5)
    total = next(line.split() for line in out.splitlines() if line.startswith("total"))
    assert total[1] == str(kept) and total[4] == str(len(rejects))
    assert "skipped" in err


def test_absolute_path_accepted_with_allow_outside_root(tmp_path: Path, capsys) -> None:
    data = layout_a(tmp_path / "data", GOOD)
    _abs_tutorial(data)
    image = write_image(tmp_path / "elsewhere/x.png").absolute()
    mask = write_mask(tmp_path / "elsewhere/x_m.png").absolute()
    with open(data / "csv_file/valid.csv", "w") as fh:
        fh.write(f"images,masks,group\n{image},{mask},far\n")
    code, _out, err = _run(capsys, data, "--allow-outside-root")
    assert code == 0, err
    manifest = read_manifest(data / "segbalance" / "manifest.csv")
    assert manifest.image == ("Images/0/img0.png", "Images/1/img1.png", image.as_posix())
    assert manifest.mask[2] == mask.as_posix() and manifest.image_paths()[2] == str(image)
    assert manifest.split == ("train", "train", "valid") and manifest.groups == ["0", "1", "far"]


def test_non_utf8_file_name_is_refused(tmp_path: Path, capsys) -> None:
    layout_a(tmp_path, GOOD)
    bad = os.path.join(os.fsencode(tmp_path / "Images/0"), b"caf\xe9.png")
    with open(bad, "wb") as fh:
        fh.write(b"x")
    code, _out, err = _run(capsys, tmp_path)
    assert code == 2 and "not valid UTF-8" in err and "Images/0/caf" in err
    assert not (tmp_path / "segbalance").exists()


# --- accepted oddities ------------------------------------------------------------------


def test_rgb_mask_is_accepted_and_rule_reported(tmp_path: Path, capsys) -> None:
    layout_a(tmp_path, GOOD)
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16, :16] = (255, 0, 0)
    write_mask(tmp_path / "Masks/1/img0.png", rgb)
    code, out, _err = _run(capsys, tmp_path)
    assert code == 0 and "rgb-nonblack x1" in out and "0/255 x4" in out
    rows = {r["mask"]: r for r in _rows(tmp_path / "segbalance" / "manifest.csv")}
    assert rows["Masks/1/img0.png"]["mask_rule"] == "rgb-nonblack"
    assert float(rows["Masks/1/img0.png"]["coverage"]) == 0.25


def test_16bit_png_mask_and_image_are_accepted(tmp_path: Path, capsys) -> None:
    layout_a(tmp_path, GOOD)
    write_mask(tmp_path / "Masks/0/img1.png", square_mask(side=16).astype(np.uint16) * 257)
    write_image(
        tmp_path / "Images/0/img2.png", np.arange(1024, dtype=np.uint16).reshape(32, 32) * 60
    )
    code, _out, err = _run(capsys, tmp_path)
    assert code == 0, err
    rows = {r["mask"]: r for r in _rows(tmp_path / "segbalance" / "manifest.csv")}
    assert float(rows["Masks/0/img1.png"]["coverage"]) == 0.25
    assert rows["Masks/0/img1.png"]["mask_rule"] == "0/255"


def test_spaces_and_non_ascii_names_work(tmp_path: Path, capsys) -> None:
    write_pair(tmp_path, "Images/grupo ñ/ünï cödé 1.png")
    write_pair(tmp_path, "Images/grupo ñ/ünï cödé 2.png")
    write_pair(tmp_path, "Images/日本/写真 1.jpg")
    code, _out, err = _run(capsys, tmp_path)
    assert code == 0, err
    manifest = read_manifest(tmp_path / "segbalance" / "manifest.csv")
    assert manifest.groups == ["grupo ñ", "日本"]
    assert "Images/日本/写真 1.jpg" in manifest.image
    assert all(Path(p).is_file() for p in manifest.mask_paths())


@pytest.mark.timeout(30)
def test_symlink_loop_does_not_hang(tmp_path: Path, capsys) -> None:
    layout_a(tmp_path, GOOD)
    os.symlink(tmp_path / "Images", tmp_path / "Images/0/loop")
    code, out, err = _run(capsys, tmp_path)
    assert code == 0, err
    assert "already scanned" in out
    assert len(read_manifest(tmp_path / "segbalance" / "manifest.csv")) == 5
