"""Predict's inputs and outputs: files, folders and globs found and read; output names, folders."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segbalance.data.check import DEFAULT_MAX_PIXELS
from segbalance.errors import Problem, UserError
from segbalance.io import MARKER, is_marked, mark_dir
from segbalance.pipeline.decode import load_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
OUTPUT_DIRS = ("masks", "colors", "overlays", "probabilities")
MARKER_KIND = "predict"  # the kind in the .segbalance marker of a folder predict created
EARLIER = "an earlier output of segbalance predict"
NOT_IMAGE = "not an image file name (" + ", ".join(IMAGE_EXTENSIONS) + ")"
FIX_IMAGE = "re-export the image as PNG or JPEG, or remove it"


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


@dataclass(frozen=True)
class Outputs:
    """Where outputs go and which are written.

    ``classes``: a multiclass model's class names; its probabilities go one folder per
    class (``probabilities/<class>/``), each file named as the input's mask.
    """

    out: Path
    overlay: bool
    probabilities: bool
    colors: bool = False
    classes: tuple[str, ...] = ()

    @property
    def kinds(self) -> list[str]:
        """The output folders directly under ``out``."""
        return (
            ["masks"]
            + ["colors"] * self.colors
            + ["overlays"] * self.overlay
            + ["probabilities"] * self.probabilities
        )

    @property
    def folders(self) -> list[str]:
        """Every folder (relative to ``out``) that gets one file per input."""
        probs = [f"probabilities/{c}" for c in self.classes] or ["probabilities"]
        return [k for k in self.kinds if k != "probabilities"] + probs * self.probabilities


def check_targets(where: Outputs, names: Sequence[Path]) -> None:
    """Refuse outputs that would replace files in an --out that predict did not create.

    Raises:
        UserError: an output folder is a file, or an output would replace a file there.
    """
    out = where.out
    for kind in where.kinds:
        if (out / kind).exists() and not (out / kind).is_dir():
            raise UserError(f"--out {out}: {out / kind} is a file, not a folder; move it")
    if not out.is_dir() or is_marked(out, MARKER_KIND):
        return
    # In a folder of the user's, an output folder predict made itself (marked) is predict's.
    mine = [f for f in where.folders if not is_marked(out / f.split("/")[0], MARKER_KIND)]
    taken = [out / f / n for f in mine for n in names if os.path.lexists(out / f / n)]
    if taken:
        raise UserError(
            f"--out {out} already holds {taken[0]} ({len(taken)} output(s) in all), and "
            f"segbalance did not create {out} (no {MARKER} file), so they may be your files; "
            "choose a new or empty --out, or move them"
        )


def make_out(where: Outputs) -> None:
    """Create --out and mark it when it is new or empty (then no file in it is the user's).

    In a folder of the user's, the output folders predict creates (masks/, ...) are marked
    instead, so a second run may replace its own outputs there and nothing else.
    """
    out = where.out
    try:
        fresh = not out.exists() or not any(out.iterdir())
        out.mkdir(parents=True, exist_ok=True)
        if fresh:
            mark_dir(out, MARKER_KIND)
            return
        for kind in where.kinds:
            if not (out / kind).exists():
                (out / kind).mkdir()
                mark_dir(out / kind, MARKER_KIND)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create it ({err.strerror or err})") from err


def _damage(path: Path) -> str:
    """Why a file PIL could open does not decode, in PIL's words (plainer than TF's)."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError) as err:
        return f"damaged or truncated image ({err})"
    return "the image decoder cannot read it (damaged, or an unsupported variant)"


def _over_cap(shown: str, pixels: int, size: str, max_pixels: int) -> Problem:
    return Problem(
        shown,
        f"{size}{pixels / 1e6:.1f} Mpx is over the pixel cap {max_pixels / 1e6:.1f} Mpx",
        "downscale or tile it, or raise --max-pixels if the memory allows",
    )


def read_input(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | Problem:
    """One input as uint8 RGB, or a Problem in plain words (checked with PIL first).

    The header gives the size before any pixel is decoded, so a decompression bomb is
    refused without the memory it would take.
    """
    shown = str(path)
    try:
        if path.stat().st_size == 0:
            return Problem(shown, "empty file (0 bytes)", FIX_IMAGE)
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError as err:  # PIL's own cap, far above ours
        found = re.search(r"\((\d+) pixels\)", str(err))
        return _over_cap(shown, int(found.group(1)) if found else 0, "", max_pixels)
    except UnidentifiedImageError:
        return Problem(shown, "not an image (no known image format inside)", FIX_IMAGE)
    except OSError as err:
        return Problem(shown, f"cannot be read ({err.strerror or err})", "check the file")
    if width * height > max_pixels:
        return _over_cap(shown, width * height, f"{width}x{height} = ", max_pixels)
    try:
        return load_image(path)
    except (UserError, OSError):
        return Problem(shown, _damage(path), FIX_IMAGE)
