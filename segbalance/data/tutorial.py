"""Layout (d): the nail tutorial's own CSVs, so its users can bring them as they are.

``csv_file/train.csv``, ``valid.csv`` (or ``val.csv``, ``test.csv``) and per-group files
``train<g>.csv`` / ``valid<g>.csv``, each with an ``images`` column of paths relative to the
image folder (``0/abc.png``). Optional columns: ``masks`` (relative to the mask folder) and
``group``. A row's group comes from its file name (``train3.csv`` -> ``3``), else the
``group`` column, else the first folder of its path, else the single group ``all``. The same
image listed by ``train.csv`` and ``train0.csv`` is one pair.

Paths that are absolute or climb out of the data root with ``..`` are refused unless
``allow_outside_root``: a manifest should move with its data.
"""

from __future__ import annotations

import os
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
from segbalance.errors import Problem

_OUTSIDE_FIX = "write the path relative to the {kind} folder, or pass --allow-outside-root"


def _resolve(
    base: Path, raw: str, root: Path, kind: str, allow_outside: bool
) -> Path | tuple[str, str]:
    """A listed path as an absolute, normalised path, or (problem, fix) when refused."""
    text = raw.strip().replace("\\", "/")
    is_abs = os.path.isabs(text) or (len(text) > 1 and text[1] == ":")
    path = Path(os.path.normpath(text if is_abs else base / text))
    if allow_outside:
        return path
    if is_abs:
        return f"absolute path '{raw}' refused", _OUTSIDE_FIX.format(kind=kind)
    if os.path.relpath(path, root).split(os.sep)[0] == "..":
        return f"path '{raw}' leaves the data root", _OUTSIDE_FIX.format(kind=kind)
    return path


class _Tutorial:
    """Collects rows of every split CSV, merging repeats of one image."""

    def __init__(
        self, root: Path, img_dir: Path, msk_dir: Path, allow_outside: bool, found: Discovery
    ) -> None:
        self.root, self.img_dir, self.msk_dir = root, img_dir, msk_dir
        self.allow_outside, self.found = allow_outside, found
        self.walker = Walker(root, found)
        # exact paths from the CSV need no index; stems shared by two files match nothing
        self.images = index_by_key(self.walker.images(img_dir))[0]
        self.masks = mask_lookup(index_by_key(self.walker.images(msk_dir))[0])
        # image path -> [split, group, group priority, mask, where first listed]
        self.rows: dict[Path, list] = {}
        self.bad: set[Path] = set()

    def reject(self, where: str, image: str, mask: str, problem: str, fix: str) -> None:
        self.found.rejects.append(Reject(image, mask, "", Problem(where, problem, fix)))

    def image_file(self, raw: str, where: str) -> Path | None:
        path = _resolve(self.img_dir, raw, self.root, "image", self.allow_outside)
        if isinstance(path, tuple):
            self.reject(where, raw, "", *path)
            return None
        if path.is_file():
            return path
        rel = os.path.relpath(path, self.img_dir)
        hit = self.images.get(pair_key(Path(rel).as_posix()))  # same stem, other extension
        if hit is None:
            self.reject(
                where,
                raw,
                "",
                f"listed image '{raw}' does not exist",
                "fix the path or remove the row",
            )
            return None
        return self.img_dir / hit

    def mask_file(self, image: Path, raw_mask: str, where: str) -> Path | None:
        shown = self.walker.rel(image)
        if raw_mask:
            path = _resolve(self.msk_dir, raw_mask, self.root, "mask", self.allow_outside)
            if isinstance(path, tuple):
                self.reject(where, shown, raw_mask, *path)
                return None
            if path.is_file():
                return path
            self.reject(
                where,
                shown,
                raw_mask,
                f"listed mask '{raw_mask}' does not exist",
                "fix the masks column or add the file",
            )
            return None
        rel = Path(os.path.relpath(image, self.img_dir)).as_posix()
        hit = None if rel.startswith("../") else self.masks.get(pair_key(rel))
        if hit is None:
            expected = self.walker.rel(self.msk_dir / pair_key(rel))
            self.reject(where, shown, "", "no mask for this image", f"add a mask {expected}.png")
            return None
        return self.msk_dir / hit

    def add(self, row: dict[str, str], split: str, file_group: str, where: str) -> None:
        raw = (row.get("images") or row.get("image") or "").strip()
        if not raw:
            self.reject(where, "", "", "empty images value", "fill in or remove the row")
            return
        image = self.image_file(raw, where)
        if image is None:
            return
        mask = self.mask_file(image, (row.get("masks") or row.get("mask") or "").strip(), where)
        if mask is None:
            return
        rel = Path(os.path.relpath(image, self.img_dir)).as_posix()
        column = (row.get("group") or "").strip()
        if file_group:
            group, prio = file_group, 3
        elif column:
            group, prio = column, 2
        elif "/" in rel and not rel.startswith("../"):
            group, prio = rel.split("/")[0], 1
        else:
            group, prio = SINGLE_GROUP, 0
        old = self.rows.get(image)
        if old is None:
            self.rows[image] = [split, group, prio, mask, where]
            return
        if old[0] != split or (prio == old[2] and group != old[1]):
            what = f"split {old[0]} vs {split}" if old[0] != split else f"group {old[1]} vs {group}"
            self.reject(
                where,
                self.walker.rel(image),
                "",
                f"also listed at {old[4]} ({what})",
                "list each image in one split and one group only",
            )
            self.bad.add(image)
        elif prio > old[2]:
            old[1], old[2] = group, prio


def discover_tutorial(
    root: Path, csv_dir: Path, img_dir: Path, msk_dir: Path, allow_outside_root: bool
) -> Discovery:
    """Pairs listed by the tutorial CSVs in ``csv_dir`` (module doc)."""
    found = Discovery(root, f"d: tutorial CSVs ({csv_dir.name}/*.csv)")
    tut = _Tutorial(root, img_dir, msk_dir, allow_outside_root, found)
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
    listed = {os.path.relpath(p, img_dir) for p in tut.rows}
    unlisted = [r for r in tut.images.values() if str(Path(r)) not in listed]
    if unlisted:
        found.notes.append(
            f"{len(unlisted)} image(s) in {img_dir.name}/ are in no CSV and are left out "
            f"(first: {unlisted[0]})"
        )
    return found
