"""The vocabulary of mask rules and the planes of a mask as training decodes them.

Rules are ``<plane>><T>``: foreground where the plane, on the 0..255 scale training reads
(16-bit values / 257), is above T. Planes: ``gray``, ``red``, ``green``, ``blue``, ``alpha``
and ``any`` (the brightest of red, green, blue). The names older manifests hold, ``0/255``,
``0/1``, ``palette-nonblack`` and ``rgb-nonblack``, all mean ``any>0``. Which rule reads a
given mask is :mod:`segbalance.data.mask_rules`.

Example:
    >>> parse_rule("red>127"), rule_name("gray", 0.5), parse_rule("0/255")
    (('red', 127.0), 'gray>0.5', ('any', 0.0))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image

_GRAY16 = ("I", "I;16", "I;16B", "I;16L")
PLANES = ("gray", "red", "green", "blue", "alpha", "any")
CHANNELS = PLANES[:5]  # what --mask-channel may name
LEGACY_RULES = ("0/255", "0/1", "palette-nonblack", "rgb-nonblack")  # all mean any>0
_RULE = re.compile(r"^(gray|red|green|blue|alpha|any)>(\d+(?:\.\d+)?)$")
PNG_FIX = "save it as PNG (PIL: Image.open(p).save(p.with_suffix('.png')))"
_BINARY_FIX = (
    "save the mask with only 0 and 255 as PNG, or pass --mask-threshold T "
    "(values above T are foreground) for a JPEG or anti-aliased mask"
)


class MaskError(Exception):
    """A mask whose foreground no accepted rule reads (``problem``, ``fix``)."""

    def __init__(self, problem: str, fix: str = _BINARY_FIX) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def parse_rule(rule: str) -> tuple[str, float]:
    """``(plane, T)`` of a rule name; the legacy names are ``("any", 0.0)``.

    Raises:
        ValueError: not a rule name.
    """
    if rule in LEGACY_RULES or not rule:  # empty: a manifest from before the column
        return "any", 0.0
    match = _RULE.match(rule)
    if not match:
        raise ValueError(
            f"unknown mask rule '{rule}'; valid: {', '.join(LEGACY_RULES)} or <plane>>T "
            f"with plane one of {', '.join(PLANES)}"
        )
    return match[1], float(match[2])


def rule_name(plane: str, threshold: float) -> str:
    """``red>127``; the number written without exponent so :func:`parse_rule` reads it."""
    return f"{plane}>{np.format_float_positional(float(threshold), trim='-')}"


@dataclass(frozen=True)
class Planes:
    """A mask as training decodes it: native ints (``top`` 255 or 65535) per plane."""

    mode: str
    rgb: np.ndarray  # HxWx3, or HxWx1 for gray (training tiles it)
    alpha: np.ndarray | None
    top: int
    indices: np.ndarray | None = None  # palette masks: the index of each pixel
    palette: np.ndarray | None = None  # palette masks: Nx3 colours
    lossy: bool = False  # JPEG: even values that look binary are the codec's guess

    @cached_property
    def is_gray(self) -> bool:
        c = self.rgb
        return c.shape[2] == 1 or bool(
            (c[..., 0] == c[..., 1]).all() and (c[..., 1] == c[..., 2]).all()
        )

    def plane(self, name: str) -> np.ndarray:
        if name == "alpha":
            assert self.alpha is not None
            return self.alpha
        if name == "any":
            return self.rgb.max(axis=2)
        return self.rgb[
            ..., 0 if name == "gray" or self.rgb.shape[2] == 1 else PLANES.index(name) - 1
        ]

    def foreground(self, rule: str) -> np.ndarray:
        """Bool HxW: the rule applied in float32, as :mod:`segbalance.pipeline.decode` does."""
        plane, threshold = parse_rule(rule)
        values = self.plane(plane).astype(np.float32)
        if self.top == 65535:
            values /= np.float32(257.0)
        return values > np.float32(threshold)


def mask_planes(img: Image.Image) -> Planes:
    """The planes training sees: palette expanded (alpha only from a tRNS, as libpng does).

    Raises:
        MaskError: a mode no rule reads (CMYK, float, values above 16 bits).
    """
    mode = img.mode
    if mode == "1":
        return Planes(mode, np.asarray(img, np.uint8)[..., None] * np.uint8(255), None, 255)
    if mode in ("L", "LA"):
        arr = np.asarray(img)
        gray = arr if mode == "L" else arr[..., 0]
        return Planes(mode, gray[..., None], None if mode == "L" else arr[..., 1], 255)
    if mode in _GRAY16:
        gray = np.asarray(img).astype(np.int64)
        if gray.min(initial=0) < 0 or gray.max(initial=0) > 65535:
            raise MaskError(f"mask mode {mode} holds values outside 0..65535", PNG_FIX)
        return Planes(mode, gray.astype(np.uint16)[..., None], None, 65535)
    if mode == "P":
        rgba = "transparency" in img.info
        arr = np.asarray(img.convert("RGBA" if rgba else "RGB"))
        pal = np.asarray(img.getpalette("RGB") or [0, 0, 0], np.uint8).reshape(-1, 3)
        return Planes(mode, arr[..., :3], arr[..., 3] if rgba else None, 255, np.asarray(img), pal)
    if mode in ("RGB", "RGBA"):
        arr = np.asarray(img)
        return Planes(mode, arr[..., :3], arr[..., 3] if mode == "RGBA" else None, 255)
    raise MaskError(
        f"mask mode {mode} is not a supported encoding",
        "save the mask as 8-bit gray PNG with 0 and 255",
    )
