"""Find image/mask pairs and their group in the usual folder layouts.

Layouts (folder names case-insensitive):

* (a) ``Images/<group>/...`` + ``Masks/<group>/...``
* (b) ``train|valid|test/images|masks/[<group>/]...`` (split from the folders; also
  ``Images/train|valid/[<group>/]...``)
* (c) ``images/`` + ``masks/`` without group folders: one group, or groups from ``--groups CSV``
* (d) the tutorial's CSVs: ``csv_file/train.csv``, ``valid.csv``, ``train<g>.csv`` with an
  ``images`` column of paths relative to the image folder (``train<g>.csv`` gives group g)

Pairs match by relative path and stem whatever the extension. Non-image files are ignored
and counted; unpaired files and empty group folders become :class:`Reject` rows.

Example:
    >>> found = discover("data")
    >>> found.layout, len(found.pairs), len(found.rejects)
    ('a: Images/<group> + Masks/<group>', 1105, 0)
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from segbalance.data.manifest import natural_key
from segbalance.errors import Problem, UserError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels")
CSV_DIRS = ("csv_file", "csv_files", "csv")
SPLIT_ALIASES = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}
MASK_SUFFIXES = ("_mask", "-mask", "_gt", "_label")
SINGLE_GROUP = "all"
_SPLIT_CSV = re.compile(r"^(train|valid|val|validation|test)[_-]?(.*)\.csv$", re.IGNORECASE)


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
    """What :func:`discover` found under a data root."""

    root: Path
    layout: str
    pairs: list[Pair] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _child_dir(parent: Path, names: Iterable[str]) -> Path | None:
    """The child folder whose lower-cased name is in ``names`` (first by ``names`` order)."""
    if not parent.is_dir():
        return None
    found: dict[str, list[Path]] = {}
    for entry in os.scandir(parent):
        if entry.is_dir():
            found.setdefault(entry.name.lower(), []).append(Path(entry.path))
    for name in names:
        hits = found.get(name, [])
        if len(hits) > 1:
            raise UserError(
                f"{parent} has folders {', '.join(h.name for h in hits)} that differ only in "
                "case; merge them into one"
            )
        if hits:
            return hits[0]
    return None


def _utf8(text: str) -> bool:
    """Whether a path can go into a UTF-8 CSV (Linux names may hold arbitrary bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Walker:
    """Lists files under folders, following symlinks but each real folder only once."""

    def __init__(self, root: Path, found: Discovery) -> None:
        self.root, self.found = root, found

    def rel(self, path: str | Path) -> str:
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


def _key(rel: str) -> str:
    """Relative path without the extension: the pairing key."""
    p = PurePosixPath(rel)
    return str(p.with_suffix("")) if p.suffix else rel


def _index(rels: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """key -> relative path, and the keys shared by several files (which one is meant?)."""
    by_key: dict[str, list[str]] = {}
    for rel in rels:
        by_key.setdefault(_key(rel), []).append(rel)
    index = {k: v[0] for k, v in by_key.items() if len(v) == 1}
    return index, {k: v for k, v in by_key.items() if len(v) > 1}


def _mask_lookup(masks: dict[str, str]) -> dict[str, str]:
    """Masks by key, plus by key without a common suffix ("a_mask" also answers "a")."""
    lookup = dict(masks)
    for key, rel in masks.items():
        for suffix in MASK_SUFFIXES:
            if key.lower().endswith(suffix) and key[: -len(suffix)] not in masks:
                lookup.setdefault(key[: -len(suffix)], rel)
    return lookup


def _place(
    key: str,
    group_mode: bool,
    split: str | None,
    split_folders: bool,
    group_of: dict[str, str] | None,
) -> tuple[str | None, str] | Problem:
    """(split, group) of a file from its key, or why it has none (file left blank)."""
    parts = key.split("/")
    if split_folders:
        split = SPLIT_ALIASES.get(parts[0].lower()) if len(parts) > 1 else None
        if split is None:
            return Problem("", "file outside a train/valid folder", "move it into one")
        parts = parts[1:]
    if group_mode:
        if len(parts) < 2:
            return Problem("", "file outside any group folder", "move it into a group folder")
        return split, parts[0]
    if group_of is not None:
        rest = "/".join(parts)
        group = group_of.get(rest) or group_of.get(PurePosixPath(rest).name)
        if not group:
            return Problem("", "image not in the --groups CSV", "add a row for it to that CSV")
        return split, group
    return split, SINGLE_GROUP


def _pair_folders(
    walker: _Walker,
    img_dir: Path,
    msk_dir: Path,
    *,
    group_mode: bool,
    split: str | None = None,
    split_folders: bool = False,
    group_of: dict[str, str] | None = None,
) -> None:
    """Pair ``img_dir`` with ``msk_dir`` by key; append pairs and rejects to the discovery."""
    found = walker.found
    images, image_dups = _index(walker.images(img_dir))
    masks, mask_dups = _index(walker.images(msk_dir))
    lookup = _mask_lookup(masks)
    used: set[str] = set()
    busy: set[str] = set()  # group folders holding at least one file

    def reject(rel: str, mask_rel: str | None, group: str, problem: str, fix: str) -> None:
        shown = walker.rel(img_dir / rel)
        mask = walker.rel(msk_dir / mask_rel) if mask_rel else ""
        found.rejects.append(Reject(shown, mask, group, Problem(shown, problem, fix)))

    for key, rels in [*((k, [r]) for k, r in images.items()), *image_dups.items()]:
        place = _place(key, group_mode, split, split_folders, group_of)
        group = "" if isinstance(place, Problem) else place[1]
        busy.add(group)
        mask_rel = lookup.get(key)
        if mask_rel:
            used.add(mask_rel)  # left out with its image, not reported twice
        if len(rels) > 1:
            for rel in rels:
                reject(
                    rel,
                    mask_rel,
                    group,
                    f"images {', '.join(rels)} share one name",
                    "keep only one of them",
                )
        elif isinstance(place, Problem):
            reject(rels[0], mask_rel, "", place.problem, place.fix)
        elif key in mask_dups:
            reject(
                rels[0],
                None,
                group,
                f"masks {', '.join(mask_dups[key])} share one name",
                "keep only one of them",
            )
            used.update(mask_dups[key])
        elif mask_rel is None:
            expected = walker.rel(msk_dir / key)
            reject(rels[0], None, group, "no mask for this image", f"add a mask {expected}.png")
        else:
            found.pairs.append(Pair(img_dir / rels[0], msk_dir / mask_rel, group, place[0]))
    orphans = [*masks.values(), *(r for rels in mask_dups.values() for r in rels)]
    for rel in sorted(set(orphans) - used, key=natural_key):
        shown = walker.rel(msk_dir / rel)
        place = _place(_key(rel), group_mode, split, split_folders, None)
        group = "" if isinstance(place, Problem) else place[1]
        busy.add(group)
        problem = Problem(shown, "mask without an image", "add its image or remove the mask")
        found.rejects.append(Reject("", shown, group, problem))
    if group_mode and not split_folders:
        _report_empty_groups(walker, img_dir, msk_dir, busy)


def _report_empty_groups(walker: _Walker, img_dir: Path, msk_dir: Path, busy: set[str]) -> None:
    """Group folders holding no image or mask at all are rejects too (a likely mistake)."""
    names: dict[str, Path] = {}
    for top in (msk_dir, img_dir):
        for entry in os.scandir(top):
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in busy:
                names[entry.name] = Path(entry.path)
    for name in sorted(names, key=natural_key):
        shown = walker.rel(names[name]) + "/"
        problem = Problem(
            shown,
            f"group folder '{name}' has no image/mask pairs",
            "add pairs to it or remove the folder",
        )
        walker.found.rejects.append(Reject(shown, "", name, problem))


def _is_group_tree(img_dir: Path, msk_dir: Path) -> bool:
    return any(
        e.is_dir() and not e.name.startswith(".")
        for top in (img_dir, msk_dir)
        for e in os.scandir(top)
    )


def _read_groups_csv(path: Path) -> dict[str, str]:
    """``image,group`` rows -> {key or file stem: group}."""
    rows = _read_csv(path, ("image", "images"))
    out: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        image, group = row.get("image") or row.get("images"), (row.get("group") or "").strip()
        if not image or not group:
            raise UserError(f"{path}:{line}: needs an image and a group value")
        key = _key(image.strip().replace("\\", "/"))
        out[key] = group
        out.setdefault(PurePosixPath(key).name, group)
    return out


def _read_csv(path: Path, need: tuple[str, ...]) -> list[dict[str, str]]:
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
            f"{path} has no '{need[0]}' column (columns: {', '.join(columns) or 'none'}); "
            f"add a header line with '{need[0]}'"
        )
    return rows


def _split_tree(walker: _Walker, splits: dict[str, Path]) -> None:
    """Layout (b): ``train|valid/images|masks/[<group>/]...``."""
    walker.found.layout = "b: train|valid/images|masks/[<group>]"
    dirs: dict[str, tuple[Path, Path]] = {}
    for split, folder in sorted(splits.items()):
        i_dir, m_dir = _child_dir(folder, IMAGE_DIRS), _child_dir(folder, MASK_DIRS)
        if i_dir is None or m_dir is None:
            raise UserError(f"{folder} needs both an images/ and a masks/ folder")
        dirs[split] = (i_dir, m_dir)
    group_mode = any(_is_group_tree(i, m) for i, m in dirs.values())
    for split, (i_dir, m_dir) in dirs.items():
        _pair_folders(walker, i_dir, m_dir, group_mode=group_mode, split=split)


def _image_mask_tree(
    walker: _Walker, img_dir: Path, msk_dir: Path, groups_csv: str | Path | None
) -> None:
    """Layouts (a), (c) and ``Images/train|valid/...``: decided by the subfolders."""
    found = walker.found
    subdirs = {e.name.lower() for t in (img_dir, msk_dir) for e in os.scandir(t) if e.is_dir()}
    subdirs = {d for d in subdirs if not d.startswith(".")}
    if subdirs and groups_csv:
        raise UserError("--groups is for layout (c); here the folders under images/ give groups")
    if subdirs and subdirs <= set(SPLIT_ALIASES):
        found.layout = "b: Images|Masks/train|valid/[<group>]"
        nested = any(
            _is_group_tree(img_dir / d, msk_dir / d)
            for d in os.listdir(img_dir)
            if (img_dir / d).is_dir() and (msk_dir / d).is_dir()
        )
        _pair_folders(walker, img_dir, msk_dir, group_mode=nested, split_folders=True)
    elif subdirs:
        found.layout = "a: Images/<group> + Masks/<group>"
        _pair_folders(walker, img_dir, msk_dir, group_mode=True)
    else:
        group_of = _read_groups_csv(Path(groups_csv)) if groups_csv else None
        found.layout = "c: images/ + masks/" + (" + --groups CSV" if groups_csv else ", one group")
        _pair_folders(walker, img_dir, msk_dir, group_mode=False, group_of=group_of)


def discover(
    root: str | Path, groups_csv: str | Path | None = None, allow_outside_root: bool = False
) -> Discovery:
    """Find pairs under ``root`` in whichever layout it uses (module doc).

    Args:
        root: the data root.
        groups_csv: ``image,group`` CSV giving groups in layout (c).
        allow_outside_root: accept tutorial-CSV paths that are absolute or leave the root.

    Raises:
        UserError: the root is missing or matches no layout, or a CSV is unreadable.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder; pass the folder holding Images/Masks")
    csv_dir = _child_dir(root, CSV_DIRS)
    img_dir, msk_dir = _child_dir(root, IMAGE_DIRS), _child_dir(root, MASK_DIRS)
    if csv_dir and img_dir and msk_dir and any(_SPLIT_CSV.match(p.name) for p in csv_dir.iterdir()):
        if groups_csv:
            raise UserError("--groups is for layout (c); the tutorial CSVs already give groups")
        from segbalance.data.tutorial import discover_tutorial  # it builds on this module

        return discover_tutorial(root, csv_dir, img_dir, msk_dir, allow_outside_root)
    walker = _Walker(root, Discovery(root, ""))
    splits = {
        SPLIT_ALIASES[e.name.lower()]: Path(e.path)
        for e in os.scandir(root)
        if e.is_dir() and e.name.lower() in SPLIT_ALIASES
    }
    if splits and not (img_dir and msk_dir):
        if groups_csv:
            raise UserError("--groups is for layout (c) (images/ + masks/ without group folders)")
        _split_tree(walker, splits)
    elif img_dir and msk_dir:
        _image_mask_tree(walker, img_dir, msk_dir, groups_csv)
    else:
        raise UserError(
            f"no known layout in {root}: expected Images/ + Masks/ (optionally with group "
            "folders), train/ + valid/ each with images/ + masks/, or csv_file/ with the "
            "tutorial CSVs. See 'segbalance prepare --help'"
        )
    return walker.found
