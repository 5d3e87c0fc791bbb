"""Checking image/mask pairs: decode, sizes, mask encoding, coverage; in parallel.

Every accepted mask encoding is binarised by one rule, "any of the first three channels
> 0" (the rule ``segbalance.pipeline.decode`` applies), so the coverage computed here is
exactly the foreground the model trains on. Accepted encodings and the rule name reported:

* gray 8-bit with values {0, 255} -> ``0/255``; {0, 1} -> ``0/1``; a single value -> by value
* gray 16-bit with {0, 65535} -> ``0/255`` (0/max); {0, 1} -> ``0/1``
* 1-bit -> ``0/255``
* palette -> ``palette-nonblack``; RGB/RGBA -> ``rgb-nonblack`` (non-black is foreground;
  an RGB mask whose three channels are equal must hold binary values like a gray one)

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

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from segbalance.errors import Problem

DEFAULT_MAX_PIXELS = 80_000_000
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L")
_BINARY_FIX = (
    "save the mask with only 0 and 255 (threshold it: values > 127 -> 255) as PNG; "
    "JPEG and resizing with interpolation create in-between values"
)


class MaskError(Exception):
    """A mask that is not binary in an accepted encoding (``problem``, ``fix``)."""

    def __init__(self, problem: str, fix: str = _BINARY_FIX) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


@dataclass(frozen=True)
class PairCheck:
    """What checking one pair found: facts for the manifest, or problems."""

    height: int = 0
    width: int = 0
    coverage: float = 0.0
    mask_rule: str = ""
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:8])
    more = f", ... ({len(values)} distinct)" if len(values) > 8 else ""
    return "{" + shown + more + "}"


def _gray_rule(arr: np.ndarray, top: int) -> str:
    """Rule for single-channel values: {0, top} -> 0/255, {0, 1} -> 0/1, one value -> ok."""
    # bincount is ~10x faster than np.unique on 8/16-bit data and gives the same set
    values = np.flatnonzero(np.bincount(arr.ravel(), minlength=2))
    if len(values) == 1:
        return "0/1" if int(values[0]) == 1 else "0/255"
    if len(values) == 2 and values[0] == 0 and values[1] in (1, top):
        return "0/1" if values[1] == 1 else "0/255"
    raise MaskError(f"mask is not binary: values {_values_text(values)}")


def mask_foreground(img: Image.Image) -> tuple[np.ndarray, str]:
    """Foreground (bool HxW) and the rule name of a decoded mask.

    Raises:
        MaskError: values or mode outside the accepted encodings (module doc).
    """
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=bool), "0/255"
    if mode in ("L", "LA"):
        gray = np.asarray(img.getchannel(0))
        return gray > 0, _gray_rule(gray, 255)
    if mode in ("I", "I;16", "I;16B", "I;16L"):
        gray = np.asarray(img).astype(np.int64)
        if gray.min(initial=0) < 0 or gray.max(initial=0) > 65535:
            raise MaskError(f"mask mode {mode} holds values outside 0..65535")
        return gray > 0, _gray_rule(gray, 65535)
    if mode in ("P", "PA"):
        rgb = np.asarray(img.convert("RGB"))
        return rgb.max(axis=2) > 0, "palette-nonblack"
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            _gray_rule(rgb[..., 0], 255)  # a gray picture saved as RGB: same value check
        return rgb.max(axis=2) > 0, "rgb-nonblack"
    raise MaskError(
        f"mask mode {mode} is not a supported encoding",
        "save the mask as 8-bit gray PNG with 0 and 255",
    )


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
    image: str, mask: str, shown: tuple[str, str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> PairCheck:
    """Check one pair; never raises for bad data (problems are returned).

    Args:
        image, mask: file paths.
        shown: how the two files are named in problems (paths relative to the data root).
        max_pixels: refuse larger images (decompression bombs).
    """
    img = _open(image, shown[0], max_pixels)
    msk = _open(mask, shown[1], max_pixels)
    problems = [x for x in (img, msk) if isinstance(x, Problem)]
    if problems:
        return PairCheck(problems=tuple(problems))
    assert isinstance(img, Image.Image) and isinstance(msk, Image.Image)
    if img.mode not in IMAGE_MODES:
        problems.append(
            Problem(shown[0], f"image mode {img.mode} is not supported", "convert it to RGB")
        )
    if img.size != msk.size:
        problems.append(
            Problem(
                shown[1],
                f"mask is {msk.width}x{msk.height} but its image {shown[0]} is "
                f"{img.width}x{img.height} (WxH)",
                "re-export the mask at the image's size (nearest-neighbour resize)",
            )
        )
    try:
        fg, rule = mask_foreground(msk)
    except MaskError as err:
        problems.append(Problem(shown[1], err.problem, err.fix))
    if problems:
        return PairCheck(problems=tuple(problems))
    return PairCheck(img.height, img.width, float(fg.mean()), rule)


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
) -> list[PairCheck]:
    """Check many pairs over threads (PIL and numpy release the GIL while decoding).

    Args:
        pairs: (image path, mask path) to open.
        names: how each pair is named in problems.
        max_pixels: pixel cap per image.
        workers: threads; default every core available.
        progress: tqdm bar on stderr; None shows it only on a terminal.

    Returns:
        One :class:`PairCheck` per pair, in order.
    """
    workers = max(1, workers or default_workers())
    disable = None if progress is None else not progress  # None: only on a terminal
    bar = tqdm(total=len(pairs), desc="checking pairs", unit="pair", disable=disable)

    def one(i: int) -> PairCheck:
        return check_pair(pairs[i][0], pairs[i][1], names[i], max_pixels)

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
