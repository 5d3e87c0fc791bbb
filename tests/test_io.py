"""Atomic writes (segbalance.io) and the table formatter (segbalance.text)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbalance.io import atomic_dir, atomic_path, atomic_write, replace_dir, write_text
from segbalance.text import format_table, table_lines


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plain_open_mode(folder: Path) -> int:
    """The mode ``open(path, "w")`` gives a new file here under the current umask."""
    probe = folder / "plain-probe"
    with open(probe, "w") as fh:
        fh.write("x")
    mode = _mode(probe)
    probe.unlink()
    return mode


@pytest.mark.parametrize("binary", [False, True])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask, binary) -> None:
    out = tmp_path / "a.txt"
    with atomic_write(out, "wb" if binary else "w") as fh:
        fh.write(b"bytes\x00\xff" if binary else "text\n")
    assert _mode(out) == _plain_open_mode(tmp_path) == 0o666 & ~umask
    assert (out.read_bytes() == b"bytes\x00\xff") if binary else (out.read_text() == "text\n")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_write_text_replaces_and_keeps_the_umask_mode(tmp_path, umask) -> None:
    out = tmp_path / "sub" / "b.json"
    write_text(out, "one")
    write_text(out, "two")
    assert out.read_text() == "two"
    assert _mode(out) == 0o666 & ~umask


def test_failure_inside_the_block_leaves_the_old_file_and_no_temp(tmp_path) -> None:
    out = tmp_path / "keep.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(out) as fh:
        fh.write("half written")
        raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_failure_before_a_first_write_creates_nothing(tmp_path) -> None:
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new.bin", "wb"):
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_only_write_modes_are_accepted(tmp_path) -> None:
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "a"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_nested_writes_rename_the_inner_file_first(tmp_path, monkeypatch) -> None:
    # the manifest relies on this: its sidecar is in place before the CSV appears
    csv, side = tmp_path / "m.csv", tmp_path / "m.json"
    renamed: list[str] = []
    real_replace = os.replace

    def replace(src: Path, dst: Path) -> None:
        renamed.append(Path(dst).name)
        if Path(dst).name == "m.json" and len(renamed) > 2:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with atomic_write(csv) as a, atomic_write(side) as b:
        a.write("csv")
        b.write("json")
    assert renamed == ["m.json", "m.csv"]
    assert (csv.read_text(), side.read_text()) == ("csv", "json")
    with (
        pytest.raises(OSError, match="disk gone"),
        atomic_write(csv) as a,
        atomic_write(side) as b,
    ):
        a.write("new csv")
        b.write("new json")
    # the sidecar's rename failed, so the CSV was not renamed either, and no temp is left
    assert (csv.read_text(), side.read_text()) == ("csv", "json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.json"]


def test_atomic_path_with_a_third_party_writer(tmp_path, umask) -> None:
    out = tmp_path / "mask.png"
    pixels = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    with atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != out
        Image.fromarray(pixels).save(tmp)  # PIL picks the format from the suffix
        assert not out.exists()
    np.testing.assert_array_equal(np.asarray(Image.open(out)), pixels)
    assert _mode(out) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def test_atomic_path_resets_a_mode_the_writer_changed(tmp_path, umask) -> None:
    out = tmp_path / "model.keras"
    with atomic_path(out, ".keras") as tmp:
        tmp.unlink()  # like a writer that deletes and re-creates its file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"zip")
        os.close(fd)
    assert out.read_bytes() == b"zip"
    assert _mode(out) == 0o666 & ~umask


def test_atomic_path_failure_removes_the_temp_and_keeps_the_old(tmp_path) -> None:
    out = tmp_path / "fig.svg"
    out.write_text("old figure")
    with pytest.raises(KeyError), atomic_path(out) as tmp:
        tmp.write_text("partial")
        raise KeyError("renderer")
    assert out.read_text() == "old figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.svg"]


def test_atomic_dir_swaps_a_whole_folder(tmp_path) -> None:
    out = tmp_path / "export" / "1"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        tmp.mkdir()
        (tmp / "half.txt").write_text("half")
        raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["1"]
    with atomic_dir(out) as tmp:
        assert not tmp.exists()  # writers such as SavedModel create the folder themselves
        tmp.mkdir()
        (tmp / "saved_model.pb").write_bytes(b"pb")
    assert [p.name for p in out.iterdir()] == ["saved_model.pb"]
    assert [p.name for p in out.parent.iterdir()] == ["1"]


def test_replace_dir_puts_the_old_folder_back_when_the_move_fails(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "never-written", out)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_table_first_column_left_the_rest_right() -> None:
    lines = table_lines(("group", "n", "iou"), [("a", "1234", "0.5"), ("longname", "5", "0.25")])
    assert lines == [
        "group        n   iou",
        "a         1234   0.5",
        "longname     5  0.25",
    ]


def test_table_left_last_column_is_not_padded_and_lines_are_stripped() -> None:
    text = format_table(("file", "problem", "fix"), [("a.png", "empty file", "re-export")], "l")
    assert text == "file   problem     fix\na.png  empty file  re-export"
    assert all(line == line.rstrip() for line in text.split("\n"))
    # per-column letters, the last one repeating: left, right, left
    assert table_lines(("x", "y", "z"), [("aa", "b", "c")], "lrl") == [
        "x   y  z",
        "aa  b  c",
    ]


def test_table_rejects_ragged_rows_and_bad_alignment() -> None:
    with pytest.raises(ValueError, match="cells"):
        table_lines(("a", "b"), [("1",)])
    with pytest.raises(ValueError, match="align"):
        table_lines(("a",), [], "c")
