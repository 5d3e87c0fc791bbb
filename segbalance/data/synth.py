"""The built-in data set: nail-like photos with binary masks, five groups of unequal size.

It mirrors the nail segmentation tutorial: folders ``0``..``4`` with 749/144/126/52/34
images (times ``scale``). Every image shows a skin-toned hand whose fingers end in one to
five glossy nails; the mask marks the nails (8-bit gray, 0 or 255). Each group has its own
look, so a model trained mostly on group 0 does measurably worse on the small groups:

* ``0`` studio: bright even light, light background, medium nails in red/pink polish.
* ``1`` warm close-up: one or two large nails, yellow indoor light, wooden table.
* ``2`` cool daylight: bluish cast, striped fabric, 2-5 natural (pale) nails, soft focus.
* ``3`` dim: dark with a strong vignette, darker skin, nude polish close to the skin tone.
* ``4`` far away: many tiny nails in blue/green/black polish, blur and sensor noise.

Drawing is vectorised numpy on the bounding box of each shape; every image draws from its
own generator seeded by ``(seed, group, index)``, so the result does not depend on the
number of worker processes. Files appear under ``OUT/Images`` and ``OUT/Masks`` only when
the whole set is written (they are built in ``OUT/.synth-tmp`` and renamed).

``classes=True`` (``synth --classes``) writes the 3-class version: the same photos plus a
metal ring on a finger in most images of the small groups 3 and 4 and few of the others
(the rare class), label masks 0 background, 1 nail, 2 ring, and ``OUT/classes.yaml``.

Example:
    >>> counts = generate(Path("data/synth"), scale=0.1, size=128)
    >>> counts
    {'0': 75, '1': 14, '2': 13, '3': 5, '4': 3}
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segbalance.data.synth_draw import CLASS_NAMES, RING, STYLES, render
from segbalance.errors import UserError
from segbalance.io import check_output_path, json_object

TUTORIAL_COUNTS: dict[str, int] = {"0": 749, "1": 144, "2": 126, "3": 52, "4": 34}
TMP_NAME = ".synth-tmp"
INFO_NAME = "synth.json"
CLASSES_NAME = "classes.yaml"
#: The classes file ``synth --classes`` writes (colours for predicted colour masks).
CLASSES_YAML = f"""# segbalance synth --classes: the label masks hold these values
classes:
  - {{name: {CLASS_NAMES[0]}, value: 0}}
  - {{name: {CLASS_NAMES[1]}, value: 1, color: [230, 25, 75]}}
  - {{name: {CLASS_NAMES[2]}, value: 2, color: [255, 200, 0]}}
"""
Job = tuple[Path, str, int, int, int, bool]


def group_counts(scale: float) -> dict[str, int]:
    """Images per group for ``scale`` (tutorial counts times scale, rounded, at least 3).

    Example:
        >>> group_counts(0.1)
        {'0': 75, '1': 14, '2': 13, '3': 5, '4': 3}
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise UserError(f"--scale must be a positive number, got {scale}")
    return {g: max(3, math.floor(n * scale + 0.5)) for g, n in TUTORIAL_COUNTS.items()}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(pixels: np.ndarray, level: int = 1) -> bytes:
    """Encode an 8-bit gray (HxW) or RGB (HxWx3) array as PNG with the "Up" row filter.

    About twice as fast as Pillow's encoder on noisy photos (it tries every filter per
    row) at the same size; the bytes depend only on the pixels.
    """
    h, w = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(h, -1)
    filtered = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it (mod 256)
    filtered[0, 0] = 0  # the first row has nothing above it
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)),
            _chunk(b"IEND", b""),
        )
    )


def file_name(group: str, index: int) -> str:
    """The name synth gives image (and mask) ``index`` of ``group``."""
    return f"nail_{group}_{index:04d}.png"


def _write_one(job: Job) -> tuple[str, bool]:
    """Draw and write one pair: its group, and whether its mask shows a ring."""
    root, group, index, size, seed, classes = job
    image, mask = render(group, index, size, seed, classes)
    name = file_name(group, index)
    (root / "Images" / group / name).write_bytes(png_bytes(image))
    (root / "Masks" / group / name).write_bytes(png_bytes(mask, level=6))
    return group, bool(classes and (mask == RING).any())


def _synth_paths(counts: dict[str, int]) -> set[str]:
    """Every folder and file (relative to OUT) synth writes for ``counts``."""
    paths = {"Images", "Masks"}
    for top in ("Images", "Masks"):
        for g, n in counts.items():
            paths.add(f"{top}/{g}")
            paths.update(f"{top}/{g}/{file_name(g, i)}" for i in range(n))
    return paths


def _recorded_classes(out: Path) -> bool:
    """Whether OUT's synth.json records the classes file as synth's own."""
    info = json_object(out / INFO_NAME)
    return info is not None and info.get("classes_file") == CLASSES_NAME


def _classes_edited(out: Path) -> bool:
    """Whether OUT's classes.yaml is synth's by record but no longer what synth wrote."""
    path = out / CLASSES_NAME
    if not _recorded_classes(out) or not path.is_file():
        return False
    try:
        return path.read_text(encoding="utf-8") != CLASSES_YAML
    except (OSError, UnicodeDecodeError):
        return True


def _recorded_counts(out: Path) -> dict[str, int]:
    """The counts in OUT's synth.json; a UserError when it is not one synth wrote."""
    info = json_object(out / INFO_NAME)
    counts = info.get("counts") if info is not None else None
    if not (isinstance(counts, dict) and all(type(n) is int for n in counts.values())):
        raise UserError(
            f"{out / INFO_NAME} is not one segbalance synth wrote (no image counts), so "
            f"{out} is left as it is. Choose an empty or new OUT"
        )
    return {str(g): n for g, n in counts.items()}


def foreign_files(out: Path) -> list[str]:
    """What lies in OUT/Images and OUT/Masks that synth did not write (per synth.json).

    A folder synth did not write is listed once, not file by file; a link is never ours.
    """
    ours = _synth_paths(_recorded_counts(out))
    foreign: list[str] = []
    for top in ("Images", "Masks"):
        base = out / top
        if not os.path.lexists(base):
            continue
        if base.is_symlink() or not base.is_dir():
            foreign.append(top)
            continue
        for folder, dirs, files in os.walk(base):  # links are not followed
            rel = Path(folder).relative_to(out).as_posix()
            for d in sorted(dirs):
                if f"{rel}/{d}" not in ours or (Path(folder) / d).is_symlink():
                    foreign.append(f"{rel}/{d}/")
            dirs[:] = sorted(d for d in dirs if f"{rel}/{d}" in ours)
            foreign += [f"{rel}/{f}" for f in sorted(files) if f"{rel}/{f}" not in ours]
    return foreign


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _outputs(classes: bool) -> tuple[str, ...]:
    """What synth puts directly in OUT."""
    return ("Images", "Masks", INFO_NAME) + ((CLASSES_NAME,) if classes else ())


def _check_replaceable(out: Path, overwrite: bool, classes: bool = False) -> None:
    """Refuse an OUT holding data synth did not write (the real reason first), or, without
    ``overwrite``, a data set it did write. A classes.yaml counts only when synth writes one.
    """
    present = [n for n in _outputs(classes) if os.path.lexists(out / n)]
    if not present:
        return
    if not (out / INFO_NAME).is_file():
        # Images/ and Masks/ without synth.json are someone's real data: never replaced.
        raise UserError(
            f"{out} already holds {', '.join(present)} but no {INFO_NAME}, so segbalance "
            "synth did not write them (real data?); they are left as they are. Choose an "
            "empty or new OUT"
        )
    foreign = foreign_files(out)
    if CLASSES_NAME in present and not _recorded_classes(out):
        foreign.append(CLASSES_NAME)
    if _classes_edited(out):  # a user's edits: replacing or removing it would lose them
        foreign.append(f"{CLASSES_NAME} (changed since synth wrote it)")
    if foreign:
        raise UserError(
            f"{out} holds files segbalance synth did not write: {_listing(foreign)}; they "
            "are left as they are. Move them out of Images/ and Masks/, or choose an "
            "empty or new OUT"
        )
    if not overwrite:
        raise UserError(
            f"{out} already holds a data set segbalance synth wrote ({', '.join(present)}); "
            "pass --overwrite to replace it or choose an empty OUT"
        )


def _prepare_out(out: Path, overwrite: bool, classes: bool) -> Path:
    """Check OUT, and return a fresh temp folder inside it (nothing is removed yet)."""
    check_output_path(out, "OUT", folder=True)
    _check_replaceable(out, overwrite, classes)
    tmp = out / TMP_NAME
    if tmp.exists():  # left by an interrupted run of ours
        shutil.rmtree(tmp)
    for g in TUTORIAL_COUNTS:
        (tmp / "Images" / g).mkdir(parents=True)
        (tmp / "Masks" / g).mkdir(parents=True)
    return tmp


def _run_jobs(jobs: list[Job], workers: int) -> Iterator[tuple[str, bool]]:
    if workers <= 1 or len(jobs) < 48:  # starting processes costs more than small sets save
        yield from map(_write_one, jobs)
        return
    # spawn: safe even when the caller has TensorFlow (and its threads) loaded
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield from pool.map(_write_one, jobs, chunksize=16)


def generate(
    out: Path,
    scale: float = 1.0,
    size: int = 384,
    seed: int = 0,
    progress: bool = True,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    classes: bool = False,
) -> dict[str, int]:
    """Write the synthetic data set in the tutorial layout and return images per group.

    Args:
        out: folder that receives ``Images/<g>/*.png``, ``Masks/<g>/*.png`` and ``synth.json``.
        scale: multiplies the tutorial counts 749/144/126/52/34 (at least 3 per group).
        size: image side in pixels (every image is size x size).
        seed: fixes every pixel; the same seed gives byte-identical files.
        progress: show a progress bar on stderr.
        overwrite: replace a data set synth wrote in ``out`` (only that: never files it
            did not write, as recorded in ``synth.json``).
        workers: processes to draw with (default: up to 2).
        classes: the 3-class set (module doc): label masks 0/1/2 and ``OUT/classes.yaml``;
            ``synth.json`` records per group how many images show a ring.

    Raises:
        UserError: bad scale or size, ``out`` cannot be written, already holds a data
            set (without ``overwrite``), or holds files synth did not write (always).

    Example:
        >>> generate(Path("/tmp/nails"), scale=0.05, size=64, progress=False)
        {'0': 37, '1': 7, '2': 6, '3': 3, '4': 3}
    """
    counts = group_counts(scale)
    if not 32 <= size <= 4096:
        raise UserError(f"--size must be between 32 and 4096 pixels, got {size}")
    out = Path(out)
    tmp = _prepare_out(out, overwrite, classes)
    jobs = [(tmp, g, i, size, seed, classes) for g, n in counts.items() for i in range(n)]
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress)
    ringed = dict.fromkeys(counts, 0)
    try:
        for group, ring in _run_jobs(jobs, workers):
            ringed[group] += ring
            bar.update()
    finally:
        bar.close()
    info: dict[str, object] = {"seed": seed, "scale": scale, "size": size, "counts": counts}
    info["styles"] = {g: s.description for g, s in STYLES.items()}
    if classes:  # only then: a binary set's synth.json stays as it was
        info.update(classes_file=CLASSES_NAME, ring_images=ringed)
        (tmp / CLASSES_NAME).write_text(CLASSES_YAML, encoding="utf-8")
    (tmp / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    _check_replaceable(out, overwrite, classes)  # again: files may have been added meanwhile
    _move_into(tmp, out, classes)
    return counts


def _move_into(tmp: Path, out: Path, classes: bool) -> None:
    """Replace OUT's data set with the one built in ``tmp`` (then removed)."""
    if not classes and _recorded_classes(out):  # the old set's classes file: stale now
        (out / CLASSES_NAME).unlink(missing_ok=True)
    for name in _outputs(classes):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(tmp / name, target)
    tmp.rmdir()
