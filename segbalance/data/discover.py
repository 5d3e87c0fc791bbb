"""Find image/mask pairs and their group in the usual folder layouts.

Layouts (folder names case-insensitive):

* (a) ``Images/<group>/...`` + ``Masks/<group>/...``
* (b) ``train|valid|test/images|masks/[<group>/]...`` (split from the folders; also
  ``Images/train|valid/[<group>/]...``)
* (c) ``images/`` + ``masks/`` without group folders: one group, or groups from ``--groups CSV``
* (d) the tutorial's CSVs: ``csv_file/train.csv``, ``valid.csv``, ``train<g>.csv`` with an
  ``images`` column of paths relative to the image folder (``images/`` or ``train/images/``,
  ``/1/a.png`` as the tutorial writes them); ``train<g>.csv`` gives group g. See
  :mod:`segbalance.data.tutorial`

Pairs match by relative path and stem whatever the extension. Non-image files are ignored
and counted; unpaired files and empty group folders become :class:`Reject` rows.

Example:
    >>> found = discover("data")
    >>> found.layout, len(found.pairs), len(found.rejects)
    ('a: Images/<group> + Masks/<group>', 1105, 0)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

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
from segbalance.data.tutorial import Folders, discover_tutorial
from segbalance.errors import Problem, UserError

# Pair, Reject, Discovery and SINGLE_GROUP live in pairing; callers may take them from here.
__all__ = ["SINGLE_GROUP", "Discovery", "Pair", "Reject", "discover"]

IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels")
CSV_DIRS = ("csv_file", "csv_files", "csv")


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
    walker: Walker,
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
    images, image_dups = index_by_key(walker.images(img_dir))
    masks, mask_dups = index_by_key(walker.images(msk_dir))
    lookup = mask_lookup(masks)
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
        place = _place(pair_key(rel), group_mode, split, split_folders, None)
        group = "" if isinstance(place, Problem) else place[1]
        busy.add(group)
        problem = Problem(shown, "mask without an image", "add its image or remove the mask")
        found.rejects.append(Reject("", shown, group, problem))
    if group_mode and not split_folders:
        _report_empty_groups(walker, img_dir, msk_dir, busy)


def _report_empty_groups(walker: Walker, img_dir: Path, msk_dir: Path, busy: set[str]) -> None:
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
    rows = read_csv(path, ("image", "images"))
    out: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        image, group = row.get("image") or row.get("images"), (row.get("group") or "").strip()
        if not image or not group:
            raise UserError(f"{path}:{line}: needs an image and a group value")
        key = pair_key(image.strip().replace("\\", "/"))
        out[key] = group
        out.setdefault(PurePosixPath(key).name, group)
    return out


def _split_tree(walker: Walker, splits: dict[str, Path]) -> None:
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
    walker: Walker, img_dir: Path, msk_dir: Path, groups_csv: str | Path | None
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


def _tutorial_folders(root: Path, img_dir: Path | None, msk_dir: Path | None) -> list[Folders]:
    """Image/mask folder pairs tutorial CSVs may point into: the root's, then each split's."""
    out = [Folders(None, img_dir, msk_dir)] if img_dir and msk_dir else []
    for entry in sorted(os.scandir(root), key=lambda e: natural_key(e.name)):
        split = SPLIT_ALIASES.get(entry.name.lower())
        if split and entry.is_dir():
            i_dir = _child_dir(Path(entry.path), IMAGE_DIRS)
            m_dir = _child_dir(Path(entry.path), MASK_DIRS)
            if i_dir and m_dir:  # the tutorial's loader reads train/images
                out.append(Folders(split, i_dir, m_dir))
    return out


def discover(
    root: str | Path, groups_csv: str | Path | None = None, allow_outside_root: bool = False
) -> Discovery:
    """Find pairs under ``root`` in whichever layout it uses (module doc).

    Args:
        root: the data root.
        groups_csv: ``image,group`` CSV giving groups in layout (c).
        allow_outside_root: accept tutorial-CSV paths that are absolute or leave their folder,
            and files whose real place is outside the root.

    Raises:
        UserError: the root is missing or matches no layout, or a CSV is unreadable.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder; pass the folder holding Images/Masks")
    csv_dir = _child_dir(root, CSV_DIRS)
    img_dir, msk_dir = _child_dir(root, IMAGE_DIRS), _child_dir(root, MASK_DIRS)
    if csv_dir and any(SPLIT_CSV.match(p.name) for p in csv_dir.iterdir()):
        folders = _tutorial_folders(root, img_dir, msk_dir)
        if folders:
            if groups_csv:
                raise UserError("--groups is for layout (c); the tutorial CSVs already give groups")
            return discover_tutorial(root, csv_dir, folders, allow_outside_root)
    walker = Walker(root, Discovery(root, ""))
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
