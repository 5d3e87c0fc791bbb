"""Input discovery and output naming of predict: files, folders and globs -> images, names."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from segbalance.errors import Problem
from segbalance.io import is_marked

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
OUTPUT_DIRS = ("masks", "overlays", "probabilities")
MARKER_KIND = "predict"  # the kind in the .segbalance marker of a folder predict created
EARLIER = "an earlier output of segbalance predict"
NOT_IMAGE = "not an image file name (" + ", ".join(IMAGE_EXTENSIONS) + ")"


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk(folder: Path, ignored: list[Problem]) -> list[Path]:
    """Image files below ``folder``; the other files go to ``ignored`` (hidden ones unsaid)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):  # temps, .DS_Store
            if _is_image(Path(name)):
                found.append(Path(dirpath) / name)
            else:
                ignored.append(Problem(str(Path(dirpath) / name), NOT_IMAGE, ""))
    return found


def _glob(pattern: str, ignored: list[Problem]) -> list[Path]:
    found: list[Path] = []
    for hit in sorted(glob.glob(pattern, recursive=True)):
        hit_path = Path(hit)
        if hit_path.is_dir():
            found += _walk(hit_path, ignored)
        elif _is_image(hit_path):
            found.append(hit_path)
        else:
            ignored.append(Problem(hit, NOT_IMAGE, ""))
    return found


def expand_inputs(
    inputs: Iterable[str | Path],
) -> tuple[list[Path], list[Problem], list[Problem]]:
    """Files from files, folders and globs (deduplicated, in order), the inputs that gave
    none, and the files passed over (not images, earlier outputs of predict).

    Example:
        >>> files, problems, ignored = expand_inputs(["photos", "more/*.png"])  # doctest: +SKIP
    """
    files: list[Path] = []
    problems: list[Problem] = []
    ignored: list[Problem] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _walk(path, ignored)
            what = "folder holds no image files (" + ", ".join(IMAGE_EXTENSIONS) + ")"
        elif path.is_file():
            found, what = [path], ""
        elif glob.has_magic(str(item)):
            found, what = _glob(str(item), ignored), "pattern matches no image file"
        else:
            problems.append(Problem(str(item), "no such file or folder", "check the path"))
            continue
        cache: dict[str, bool] = {}
        earlier = [f for f in found if _under_output(f, cache)]
        ignored += [Problem(str(f), EARLIER, "") for f in earlier]
        found = [f for f in found if f not in earlier]
        if not found:
            what = "holds only earlier outputs of segbalance predict" if earlier else what
            problems.append(Problem(str(item), what, "pass images, folders of images or globs"))
        files += found
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems, ignored


def _is_predict_dir(folder: str) -> bool:
    """True when ``folder`` carries the marker predict writes into an --out it creates."""
    return is_marked(folder, MARKER_KIND)


def _under_output(path: Path, cache: dict[str, bool]) -> bool:
    """True when ``path`` lies in masks/, overlays/ or probabilities/ of a predict --out."""
    folder = os.path.dirname(os.path.realpath(path))
    while True:
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        if os.path.basename(folder) in OUTPUT_DIRS:
            # predict marks its --out, or (in a folder of the user's) the output folder
            for marked in (parent, folder):
                if marked not in cache:
                    cache[marked] = _is_predict_dir(marked)
                if cache[marked]:
                    return True
        folder = parent


def output_names(files: Sequence[Path]) -> list[Path]:
    """Relative output paths mirroring ``files`` below their common folder.

    Each is the input's full file name plus ``.png``: one rule that never maps two files
    of one folder to one name (``a.jpg``, ``a.png`` and ``a.jpg.png`` give three).

    Example:
        >>> [str(n) for n in output_names([Path("/d/a.jpg"), Path("/d/a.png")])]
        ['a.jpg.png', 'a.png.png']
    """
    if not files:
        return []
    absolute = [Path(os.path.abspath(f)) for f in files]
    base = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    return [p.relative_to(base).with_name(p.name + ".png") for p in absolute]


def clashes(names: Sequence[Path]) -> dict[int, int]:
    """``{i: j}`` for each name ``i`` that would overwrite an earlier name ``j`` or its folder.

    Names are compared case-folded (two files on Linux are one on macOS or Windows); a
    name that is also a folder of another (``x.png.png/`` beside ``x.png``) clashes too.
    """
    owner: dict[str, int] = {}
    folders: dict[str, int] = {}
    found = {}
    for i, name in enumerate(names):
        key = name.as_posix().casefold()
        parts = [p.as_posix().casefold() for p in name.parents if str(p) != "."]
        hit = owner.get(key, folders.get(key))
        hit = next((owner[p] for p in parts if p in owner), hit)
        if hit is not None:
            found[i] = hit
            continue
        owner[key] = i
        for p in parts:
            folders.setdefault(p, i)
    return found
