"""Layout (d): the nail tutorial's own CSVs, so its users can bring them as they are.

``csv_file/train.csv``, ``valid.csv`` (or ``val.csv``, ``test.csv``) and per-group files
``train<g>.csv`` / ``valid<g>.csv``, each with an ``images`` column of paths relative to the
image folder. The tutorial's ``data_processing.py`` writes them with a leading slash
(``/1/first_image.png``, ``\\1\\first_image.png`` on Windows) because it strips the folder
prefix by string replacement; both forms, and ``./1/a.png``, mean the same file. Optional
columns: ``masks`` (relative to the mask folder), ``group``, and ``train`` (1/0: the row is
in the training or the validation split, whatever the file). ``type`` (in the tutorial's
``train<g>.csv``) and an unnamed pandas index column are read and not used.

Image folders: ``images/`` + ``masks/`` at the root and ``<split>/images`` + ``masks`` (the
tutorial's loader reads ``train/images``). A path is looked up in the folder of the CSV's
own split first, then the root's, then the others; the first that holds it wins.

A row's group comes from its file name (``train3.csv`` -> ``3``), else the ``group`` column,
else the first folder of its path, else the single group ``all``. The same image listed by
``train.csv`` and ``train0.csv`` is one pair.

Refused unless ``allow_outside_root``: absolute paths, paths that climb out of their folder
with ``..``, and files whose real place (symlinks followed) is outside the data root. Each
refusal names the CSV row and the value: a manifest should move with its data.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from segbalance.data.manifest import natural_key
from segbalance.data.pairing import (
    SINGLE_GROUP,
    SPLIT_ALIASES,
    SPLIT_CSV,
    Discovery,
    Pair,
    Reject,
    Walker,
    index_by_key,
    mask_lookup,
    pair_key,
    read_csv,
)
from segbalance.data.paths import has_drive, path_problem
from segbalance.errors import Problem

_OUTSIDE_FIX = (
    "write the path relative to the {kind} folder, as the tutorial does (1/a.png or "
    "/1/a.png), or pass --allow-outside-root"
)
_TRUE, _FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no"}


@dataclass(frozen=True)
class Folders:
    """An image folder and its mask folder; ``split`` when they sit in a split folder."""

    split: str | None
    images: Path
    masks: Path


@dataclass(frozen=True)
class _Top:
    """A folder pair with its files by pairing key."""

    folders: Folders
    images: dict[str, str]
    masks: dict[str, str]


_Hit = tuple[_Top, Path]  # a located file and the folder pair it was found in


def _row_split(row: dict[str, str], file_split: str) -> str | None:
    """The split of a row: its ``train`` 1/0 value when the CSV has one, else the file's."""
    if "train" not in row:
        return file_split
    flag = row["train"].strip().lower()
    if flag in _TRUE:
        return "train"
    if flag in _FALSE:
        return "valid" if file_split == "train" else file_split
    return None


class _Tutorial:
    """Collects rows of every split CSV, merging repeats of one image."""

    def __init__(
        self, root: Path, folders: list[Folders], allow_outside: bool, found: Discovery
    ) -> None:
        self.root, self.allow_outside, self.found = root, allow_outside, found
        self.real_root = root.resolve()
        self.walker = Walker(root, found)
        # exact paths from the CSV need no index; stems shared by two files match nothing
        self.tops = [
            _Top(
                f,
                index_by_key(self.walker.images(f.images))[0],
                mask_lookup(index_by_key(self.walker.images(f.masks))[0]),
            )
            for f in folders
        ]
        # image path -> [split, group, group priority, mask, where first listed]
        self.rows: dict[Path, list] = {}
        self.bad: set[Path] = set()
        self.listed: set[Path] = set()

    def reject(self, where: str, image: str, mask: str, problem: str, fix: str) -> None:
        self.found.rejects.append(Reject(image, mask, "", Problem(where, problem, fix)))

    def order(self, split: str) -> list[_Top]:
        """Folder pairs to look in for a CSV of ``split``: its own, the root's, the rest."""
        rank = {split: 0, None: 1}
        return sorted(self.tops, key=lambda t: rank.get(t.folders.split, 2))

    def locate(self, raw: str, tops: list[_Top], kind: str) -> _Hit | Problem:
        """The file a listed path names, with its folder pair, or why it is refused."""
        text = raw.strip().replace("\\", "/")
        drive = has_drive(text) or text.startswith("//")
        rel = text.lstrip("/")  # the tutorial's "/1/a.png" is relative to the folder
        fix = _OUTSIDE_FIX.format(kind=kind)
        climbs = posixpath.normpath(rel).split("/")[0] == ".."
        tried: list[tuple[_Top, Path, Path]] = []
        if not drive and (self.allow_outside or not climbs):
            for top in tops:
                folder = top.folders.images if kind == "image" else top.folders.masks
                tried.append((top, folder, Path(os.path.normpath(folder / rel))))
        hit = self._first_file(tried, kind)
        if hit is not None:
            return self._inside(hit, raw)
        literal = Path(text)
        if (drive or text.startswith("/")) and literal.is_file():  # a real absolute path
            if self.allow_outside:
                return tops[0], literal
            return Problem("", f"absolute path '{raw}' refused", fix)
        if drive and not self.allow_outside:
            return Problem("", f"absolute path '{raw}' refused", fix)
        if not tried:
            return Problem("", f"path '{raw}' climbs out of the {kind} folder", fix)
        where = ", ".join(self.walker.rel(p) for _t, _f, p in tried)
        problem = f"listed {kind} '{raw}' does not exist (looked for {where})"
        return Problem("", problem, "fix the path or remove the row")

    def _first_file(self, tried: list[tuple[_Top, Path, Path]], kind: str) -> _Hit | None:
        """The first candidate that is a file; for images, also by stem (other extension)."""
        for top, _folder, path in tried:
            if path.is_file():
                return top, path
        if kind == "image":
            for top, folder, path in tried:
                found = top.images.get(pair_key(Path(os.path.relpath(path, folder)).as_posix()))
                if found is not None:
                    return top, folder / found
        return None

    def _inside(self, hit: _Hit, raw: str) -> _Hit | Problem:
        """The hit, unless its real file lies outside the data root (a symlink)."""
        self.listed.add(hit[1])  # refused or not, it is not "in no CSV"
        if self.allow_outside:
            return hit
        reason = path_problem(self.walker.rel(hit[1]), self.root, self.real_root)
        fix = "copy the file into the data root, or pass --allow-outside-root"
        return hit if reason is None else Problem("", f"'{raw}': {reason}", fix)

    def mask_file(self, top: _Top, image: Path, raw_mask: str, where: str) -> Path | None:
        shown = self.walker.rel(image)
        if raw_mask:
            tops = [top, *(t for t in self.tops if t is not top)]
            hit = self.locate(raw_mask, tops, "mask")
            if isinstance(hit, Problem):
                self.reject(where, shown, raw_mask, hit.problem, hit.fix)
                return None
            return hit[1]
        rel = Path(os.path.relpath(image, top.folders.images)).as_posix()
        found = None if rel.startswith("../") else top.masks.get(pair_key(rel))
        if found is None:
            expected = self.walker.rel(top.folders.masks / pair_key(rel))
            self.reject(where, shown, "", "no mask for this image", f"add a mask {expected}.png")
            return None
        return top.folders.masks / found

    def add(self, row: dict[str, str], file_split: str, file_group: str, where: str) -> None:
        raw = (row.get("images") or row.get("image") or "").strip()
        if not raw:
            self.reject(where, "", "", "empty images value", "fill in or remove the row")
            return
        split = _row_split(row, file_split)
        if split is None:
            problem = f"train value '{row['train']}' is not 1 or 0"
            self.reject(where, raw, "", problem, "write 1 (training) or 0 (validation)")
            return
        hit = self.locate(raw, self.order(file_split), "image")
        if isinstance(hit, Problem):
            self.reject(where, raw, "", hit.problem, hit.fix)
            return
        top, image = hit
        mask = self.mask_file(
            top, image, (row.get("masks") or row.get("mask") or "").strip(), where
        )
        if mask is not None:
            rel = Path(os.path.relpath(image, top.folders.images)).as_posix()
            self.merge(image, split, _group(row, file_group, rel), mask, where)

    def merge(
        self, image: Path, split: str, group: tuple[str, int], mask: Path, where: str
    ) -> None:
        """Record a row; a repeat may raise the group's priority but not change the split."""
        old = self.rows.get(image)
        if old is None:
            self.rows[image] = [split, group[0], group[1], mask, where]
            return
        if old[0] != split or (group[1] == old[2] and group[0] != old[1]):
            what = (
                f"split {old[0]} vs {split}" if old[0] != split else f"group {old[1]} vs {group[0]}"
            )
            self.reject(
                where,
                self.walker.rel(image),
                "",
                f"also listed at {old[4]} ({what})",
                "list each image in one split and one group only",
            )
            self.bad.add(image)
        elif group[1] > old[2]:
            old[1], old[2] = group


def _group(row: dict[str, str], file_group: str, rel: str) -> tuple[str, int]:
    """(group, priority): file name 3, group column 2, first folder 1, single group 0."""
    column = (row.get("group") or "").strip()
    if file_group:
        return file_group, 3
    if column:
        return column, 2
    if "/" in rel and not rel.startswith("../"):
        return rel.split("/")[0], 1
    return SINGLE_GROUP, 0


def discover_tutorial(
    root: Path, csv_dir: Path, folders: list[Folders], allow_outside_root: bool
) -> Discovery:
    """Pairs listed by the tutorial CSVs in ``csv_dir`` (module doc)."""
    found = Discovery(root, f"d: tutorial CSVs ({csv_dir.name}/*.csv)")
    tut = _Tutorial(root, folders, allow_outside_root, found)
    for path in sorted(csv_dir.iterdir(), key=lambda p: natural_key(p.name)):
        match = SPLIT_CSV.match(path.name)
        if not match:
            found.ignored.append(tut.walker.rel(path))
            continue
        split, file_group = SPLIT_ALIASES[match[1].lower()], match[2]
        for line, row in enumerate(read_csv(path, ("images", "image")), start=2):
            tut.add(row, split, file_group, f"{tut.walker.rel(path)}:{line}")
    for image, (split, group, _prio, mask, _where) in tut.rows.items():
        if image not in tut.bad:
            found.pairs.append(Pair(image, mask, group, split))
    for top in tut.tops:
        folder = top.folders.images
        unlisted = [
            r for r in top.images.values() if Path(os.path.normpath(folder / r)) not in tut.listed
        ]
        if unlisted:
            found.notes.append(
                f"{len(unlisted)} image(s) in {tut.walker.rel(folder)}/ are in no CSV and are "
                f"left out (first: {unlisted[0]})"
            )
    return found
