"""Where commands write: a bad place is refused up front, named, and nothing is left half-written.

Tests run as root here, for whom a chmod'ed folder is still writable, so "cannot write" is
made real with a path under a regular file (which fails for root too) and with a full disk
simulated at the one place every segbalance file is written (segbalance.io).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import segbalance.io
from segbalance.cli import main


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A folder holding a regular file ``afile`` and an empty folder ``folder.csv``."""
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "folder.csv").mkdir()
    return tmp_path


CASES = [
    # (argv with {m} = the manifest and {p} = the place, what stderr names)
    (["train", "{m}", "--work-dir", "{p}/afile/run"], "lies under {p}/afile, which is a file"),
    (["train", "{m}", "--work-dir", "{p}/afile"], "work dir {p}/afile is a file"),
    (["stats", "{m}", "--json", "{p}/afile/stats.json"], "lies under {p}/afile, which is a file"),
    (["stats", "{m}", "--json", "{p}"], "{p} is a folder"),
    (["stats", "{m}", "--plot", "{p}/afile/x.png"], "lies under {p}/afile, which is a file"),
    (["prepare", "{d}", "--out", "{p}/folder.csv"], "--out {p}/folder.csv is a folder"),
    (["prepare", "{d}", "--out", "{p}/afile/m.csv"], "lies under {p}/afile, which is a file"),
]


@pytest.mark.parametrize(("argv", "named"), CASES)
def test_a_place_that_cannot_be_written_is_refused_and_left_alone(
    argv: list[str], named: str, place: Path, synth_manifest: Path, capsys
) -> None:
    data = synth_manifest.parent.parent
    before, data_before = _files(place), _files(data)
    fill = {"m": str(synth_manifest), "p": str(place), "d": str(data)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert named.format(**fill) in err, err
    assert "Traceback" not in err
    assert _files(place) == before  # nothing created, nothing half-written
    assert _files(data) == data_before


def test_a_full_disk_ends_cleanly_without_a_partial_file(
    tmp_path: Path, synth_manifest: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(segbalance.io.os, "fsync", no_space)
    out = tmp_path / "stats.json"
    assert main(["stats", str(synth_manifest), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp


def test_an_internal_error_still_shows_its_traceback(
    synth_manifest: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the user's OS errors are translated; a bug keeps its report."""

    def broken(fd: int) -> None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(segbalance.io.os, "fsync", broken)
    assert main(["stats", str(synth_manifest), "--json", str(tmp_path / "s.json")]) == 1
    assert "Traceback" in capsys.readouterr().err
