"""Checking image/mask pairs: decode, sizes, mask encoding, coverage; in parallel.

Two promises: every file accepted here is one the training decoder
(:mod:`segbalance.pipeline.decode`, TensorFlow) reads to the same pixels, and every mask's
foreground is read by one named rule (the manifest's ``mask_rule``) that training and
evaluate apply unchanged, so the coverage recorded is the foreground trained. The rules,
and which one a mask is read by, are :mod:`segbalance.data.mask_rules`.

Example:
    >>> results = check_pairs([("a.png", "a_mask.png")], names=[("a.png", "a_mask.png")])
    >>> results[0].coverage, results[0].mask_rule, results[0].problems
    (0.25, '0/255', ())
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from segbalance.data.class_masks import ClassChoice, check_class_mask
from segbalance.data.mask_rules import PNG_FIX, SILENT_RULES, MaskChoice, MaskError, mask_foreground
from segbalance.data.orientation import SWAPPING, displayed_size, orientation
from segbalance.errors import Problem

DEFAULT_MAX_PIXELS = 80_000_000
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L")
# what decode's PIL path (TIFF) turns into mask planes (mask_rules.Planes); PA and CMYK it
# would misread
TIFF_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L")


@dataclass(frozen=True)
class PairCheck:
    """What checking one pair found: facts for the manifest, or problems."""

    height: int = 0
    width: int = 0
    coverage: float = 0.0
    mask_rule: str = ""
    problems: tuple[Problem, ...] = ()
    orientation: int = 1  # the image's EXIF orientation (1: stored as shown)
    class_fractions: tuple[float, ...] | None = None  # multiclass: each class's pixel share

    @property
    def ok(self) -> bool:
        return not self.problems


def _bmp_problem(path: str, img: Image.Image) -> str | None:
    """Why TensorFlow's decode_bmp would fail on or misread this BMP, if it would.

    It reads the header's bit count and the raw pixel bytes only: 1/4/16-bit and RLE fail
    or come out as garbage, and an 8-bit file comes out as its palette indices.
    """
    with open(path, "rb") as fh:
        head = fh.read(34)
    size = int.from_bytes(head[14:18], "little") if len(head) >= 34 else 0
    if size < 40:
        return "BMP with an old (OS/2) header"
    bits = int.from_bytes(head[28:30], "little")
    compression = int.from_bytes(head[30:34], "little")
    if bits not in (8, 24, 32) or compression not in (0, 3):
        return f"{bits}-bit BMP" + (" (compressed)" if compression not in (0, 3) else "")
    if bits == 8 and img.mode != "L":
        return "8-bit colour-palette BMP"
    return None


def decoder_problem(path: str, img: Image.Image, shown: str) -> Problem | None:
    """A problem when training's decoder cannot read ``img`` to the pixels PIL sees.

    Training reads ``.tif``/``.tiff`` paths with PIL (modes :data:`TIFF_MODES`) and every
    other path by content with TensorFlow (PNG, JPEG, BMP of 8-bit gray, 24 or 32 bits).
    """
    if path.lower().endswith((".tif", ".tiff")):
        if img.mode in TIFF_MODES:
            return None
        return Problem(shown, f"TIFF mode {img.mode} is not supported", PNG_FIX)
    if img.format not in ("PNG", "JPEG", "BMP"):
        kind = os.path.splitext(path)[1] or "extension-less"
        return Problem(shown, f"holds {img.format} data under a {kind} name", PNG_FIX)
    reason = _bmp_problem(path, img) if img.format == "BMP" else None
    if reason:
        return Problem(shown, f"{reason}: training's BMP decoder cannot read it", PNG_FIX)
    return None


def _open(path: str, shown: str, max_pixels: int) -> Image.Image | Problem:
    """Open and fully decode one file, or say what is wrong with it."""
    try:
        if not os.path.exists(path):  # a dangling symlink, or the file vanished meanwhile
            return Problem(shown, "file does not exist (broken link?)", "fix or remove the link")
        if os.path.getsize(path) == 0:
            return Problem(shown, "empty file (0 bytes)", "re-export or remove the file")
        # PIL itself warns above ~89 Mpx and refuses above twice that; no warnings filter
        # here because catch_warnings is not thread-safe
        img = Image.open(path)
        pixels = img.width * img.height
        if pixels > max_pixels:
            return Problem(
                shown,
                f"{img.width}x{img.height} = {pixels / 1e6:.1f} Mpx is over the pixel cap "
                f"{max_pixels / 1e6:.1f} Mpx",
                "downscale the image (and its mask) or raise --max-pixels if you trust it",
            )
        img.load()
        return img
    except Image.DecompressionBombError as err:
        return Problem(shown, f"over the pixel cap: {err}", "downscale the image and its mask")
    except UnidentifiedImageError:
        return Problem(shown, "not a readable image", "re-export it as PNG or JPEG, or remove it")
    except (OSError, SyntaxError, ValueError) as err:
        return Problem(shown, f"cannot decode ({err})", "re-export the file; it is damaged")


def check_pair(
    image: str,
    mask: str,
    shown: tuple[str, str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    choice: MaskChoice = SILENT_RULES,
    classes: ClassChoice | None = None,
) -> PairCheck:
    """Check one pair; never raises for bad data (problems are returned).

    Args:
        image, mask: file paths.
        shown: how the two files are named in problems (paths relative to the data root).
        max_pixels: refuse larger images (decompression bombs).
        choice: the user's mask rule, for a mask whose encoding needs one (see
            :func:`~segbalance.data.mask_rules.decide_rule`).
        classes: multiclass: the mask is checked against these classes instead
            (:func:`~segbalance.data.class_masks.check_class_mask`); ``coverage`` is then
            the share of foreground-class pixels and ``class_fractions`` each class's share.
    """
    img = _open(image, shown[0], max_pixels)
    msk = _open(mask, shown[1], max_pixels)
    problems = [x for x in (img, msk) if isinstance(x, Problem)]
    if problems:
        return PairCheck(problems=tuple(problems))
    assert isinstance(img, Image.Image) and isinstance(msk, Image.Image)
    for path, opened, name in ((image, img, shown[0]), (mask, msk, shown[1])):
        unreadable = decoder_problem(path, opened, name)
        if unreadable:
            problems.append(unreadable)
    if img.mode not in IMAGE_MODES:
        problems.append(
            Problem(shown[0], f"image mode {img.mode} is not supported", "convert it to RGB")
        )
    size_problem = _size_problem(img, msk, shown)
    if size_problem is not None:
        problems.append(size_problem)
    fractions = None
    if classes is not None:
        read = check_class_mask(msk, shown[1], classes)
        if isinstance(read, Problem):
            problems.append(read)
        else:
            fractions, rule = read
            coverage = float(fractions[1:].sum())
    else:
        try:
            fg, rule = mask_foreground(msk, choice)
            coverage = float(fg.mean())
        except MaskError as err:
            problems.append(Problem(shown[1], err.problem, err.fix))
    if problems:
        return PairCheck(problems=tuple(problems))
    width, height = displayed_size(img)  # as viewers show it: what masks are drawn on
    per_class = None if fractions is None else tuple(float(f) for f in fractions)
    turn = orientation(img)
    return PairCheck(height, width, coverage, rule, orientation=turn, class_fractions=per_class)


def _size_problem(img: Image.Image, msk: Image.Image, shown: tuple[str, str]) -> Problem | None:
    """The mask does not cover its image as both are displayed (EXIF orientation applied)."""
    if orientation(msk) != 1:
        # Masks are read as stored; one that viewers would turn has two meanings.
        return Problem(
            shown[1],
            f"the mask carries an EXIF orientation ({orientation(msk)}): viewers turn it",
            "save the mask without EXIF data, drawn on the photo as viewers show it",
        )
    (iw, ih), (mw, mh) = displayed_size(img), msk.size
    if (iw, ih) == (mw, mh):
        return None
    said = f"mask is {mw}x{mh} but its image {shown[0]} is {iw}x{ih} (WxH, as displayed)"
    turned = orientation(img) in SWAPPING
    if (iw, ih) == (mh, mw) and turned:
        return Problem(
            shown[1],
            f"{said}: the photo's EXIF orientation turns it, and the mask matches the "
            "unturned pixels",
            "draw or export the mask on the photo as viewers show it, or save the photo "
            "without its EXIF orientation (do not resize the mask: that distorts it)",
        )
    if (iw, ih) == (mh, mw):
        return Problem(
            shown[1],
            f"{said}: height and width are swapped",
            "rotate the mask (or the image) so that both are upright; do not resize it",
        )
    return Problem(shown[1], said, "re-export the mask at the image's size (nearest-neighbour)")


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_pairs(
    pairs: Sequence[tuple[str, str]],
    names: Sequence[tuple[str, str]],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool | None = None,
    choice: MaskChoice = SILENT_RULES,
    classes: ClassChoice | None = None,
) -> list[PairCheck]:
    """Check many pairs over threads (PIL and numpy release the GIL while decoding).

    Args:
        pairs: (image path, mask path) to open.
        names: how each pair is named in problems.
        max_pixels: pixel cap per image.
        choice: the user's mask rule, the same for every pair.
        classes: multiclass: the classes every mask is checked against.
        workers: threads; default every core available.
        progress: tqdm bar on stderr; None shows it only on a terminal.

    Returns:
        One :class:`PairCheck` per pair, in order.
    """
    workers = max(1, workers or default_workers())
    disable = None if progress is None else not progress  # None: only on a terminal
    bar = tqdm(total=len(pairs), desc="checking pairs", unit="pair", disable=disable)

    def one(i: int) -> PairCheck:
        return check_pair(pairs[i][0], pairs[i][1], names[i], max_pixels, choice, classes)

    results: list[PairCheck] = []
    with bar:
        if workers == 1 or len(pairs) < 4:
            for i in range(len(pairs)):
                results.append(one(i))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for res in pool.map(one, range(len(pairs))):
                    results.append(res)
                    bar.update()
    return results
