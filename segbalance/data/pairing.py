"""What every data layout shares: pair and reject rows, the file walker, pairing keys, CSVs.

:mod:`segbalance.data.discover` (folder layouts) and :mod:`segbalance.data.tutorial` (the
tutorial's CSVs) both build on these pieces, so neither has to reach into the other.

Pairing rule: an image and a mask pair when their paths relative to the image and mask
folders agree without the extension (:func:`pair_key`); a mask may also carry one of
:data:`MASK_SUFFIXES` (``a_mask.png`` answers ``a.jpg``).

Example:
    >>> index, shared = index_by_key(["0/a.png", "0/a.jpg", "0/b.png"])
    >>> index, shared
    ({'0/b': '0/b.png'}, {'0/a': ['0/a.png', '0/a.jpg']})
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from segbalance.data.manifest import natural_key
from segbalance.data.manifest_csv import separator_hint
from segbalance.errors import Problem, UserError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}
MASK_SUFFIXES = ("_mask", "-mask", "_gt", "_label")
SINGLE_GROUP = "all"
# A tutorial split CSV: train.csv, valid3.csv, test_b.csv (split, then an optional group).
SPLIT_CSV = re.compile(r"^(train|valid|val|validation|test)[_-]?(.*)\.csv$", re.IGNORECASE)


@dataclass(frozen=True)
class Pair:
    """An image and its mask (absolute paths), group, and split when the layout gives it."""

    image: Path
    mask: Path
    group: str
    split: str | None = None


@dataclass(frozen=True)
class Reject:
    """Something left out (or fatal without --skip-invalid), with the problem row."""

    image: str
    mask: str
    group: str
    problem: Problem


@dataclass
class Discovery:
    """What :func:`segbalance.data.discover.discover` found under a data root."""

    root: Path
    layout: str
    pairs: list[Pair] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _utf8(text: str) -> bool:
    """Whether a path can go into a UTF-8 CSV (Linux names may hold arbitrary bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Walker:
    """Lists files under folders, following symlinks but each real folder only once."""

    def __init__(self, root: Path, found: Discovery) -> None:
        self.root, self.found = root, found

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the data root, POSIX style (how rows show it)."""
        return Path(os.path.relpath(path, self.root)).as_posix()

    def images(self, top: Path) -> list[str]:
        """Image files under ``top`` as POSIX paths relative to ``top``, natural order."""
        out: list[str] = []
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink loop or a second link to the same folder
                self.found.notes.append(f"{self.rel(dirpath)}: folder already scanned, skipped")
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not _utf8(path):
                    shown = (
                        self.rel(path).encode("utf-8", "surrogateescape").decode(errors="replace")
                    )
                    problem = Problem(shown, "file name is not valid UTF-8", "rename the file")
                    self.found.rejects.append(Reject(shown, "", "", problem))
                elif Path(name).suffix.lower() in IMAGE_EXTS and not name.startswith("._"):
                    out.append(Path(os.path.relpath(path, top)).as_posix())
                else:
                    self.found.ignored.append(self.rel(path))
        return sorted(out, key=natural_key)


def pair_key(rel: str) -> str:
    """Relative path without the extension: the pairing key."""
    p = PurePosixPath(rel)
    return str(p.with_suffix("")) if p.suffix else rel


def index_by_key(rels: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """key -> relative path, and the keys shared by several files (which one is meant?)."""
    by_key: dict[str, list[str]] = {}
    for rel in rels:
        by_key.setdefault(pair_key(rel), []).append(rel)
    index = {k: v[0] for k, v in by_key.items() if len(v) == 1}
    return index, {k: v for k, v in by_key.items() if len(v) > 1}


def mask_lookup(masks: dict[str, str]) -> dict[str, str]:
    """Masks by key, plus by key without a common suffix ("a_mask" also answers "a")."""
    lookup = dict(masks)
    for key, rel in masks.items():
        for suffix in MASK_SUFFIXES:
            if key.lower().endswith(suffix) and key[: -len(suffix)] not in masks:
                lookup.setdefault(key[: -len(suffix)], rel)
    return lookup


def read_csv(path: Path, need: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows with lower-cased column names; the first of ``need`` must be a column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [{(k or "").strip().lower(): (v or "") for k, v in r.items()} for r in reader]
            columns = [(c or "").strip().lower() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read {path}: {err}") from err
    if not any(c in columns for c in need):
        raise UserError(
            f"{path} has no '{need[0]}' column (columns: {', '.join(columns) or 'none'})"
            f"{separator_hint(columns)}; add a header line with '{need[0]}'"
        )
    return rows
