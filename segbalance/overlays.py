"""Drawn outputs of predictions: a mask tinted over its image, its contour, a class legend.

``predict --overlay`` writes these; they are plain numpy/PIL on uint8 RGB arrays.

Example:
    >>> overlay_image(np.zeros((4, 4, 3), np.uint8), np.eye(4, dtype=bool)).shape
    (4, 4, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segbalance.classes import ClassSet

__all__ = ["class_overlay", "edge", "erode", "overlay_image", "with_legend"]

TINT = np.array([0, 220, 255], np.float32)  # cyan: distinct from skin and common polish
CONTOUR = np.array([255, 230, 0], np.uint8)  # yellow
TINT_ALPHA = 0.45


def erode(mask: np.ndarray, outside: bool = False) -> np.ndarray:
    """3x3 binary erosion; ``outside`` is what lies beyond the border (False: background)."""
    padded = np.pad(mask, 1, constant_values=outside)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def edge(mask: np.ndarray) -> np.ndarray:
    """The contour of a binary mask: 1 px, thicker on large images."""
    line = mask & ~erode(mask)
    for _ in range(max(0, min(mask.shape) // 256)):  # thicker contour on large images
        line = line | (~erode(~line) & mask)
    return line


def overlay_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask tinted and its contour drawn (uint8 RGB, same size).

    Example:
        >>> overlay_image(np.zeros((4, 4, 3), np.uint8), np.eye(4, dtype=bool)).shape
        (4, 4, 3)
    """
    mask = mask.astype(bool)
    out = image.astype(np.float32)
    out[mask] = (1 - TINT_ALPHA) * out[mask] + TINT_ALPHA * TINT
    outline = edge(mask)
    result = np.clip(np.round(out), 0, 255).astype(np.uint8)
    result[outline] = CONTOUR
    return result


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size)
    except (ImportError, OSError):  # a Pillow without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def with_legend(image: np.ndarray, names: list[str], palette: np.ndarray) -> np.ndarray:
    """The image above a white strip naming each class beside its colour (uint8 RGB).

    The image keeps its pixels (top-left aligned); the strip widens it if the names need it.
    """
    h, w = image.shape[:2]
    font = _font(max(10, min(h, w) // 30))
    line = int(font.getbbox("Ag")[3]) + 4
    text_w = max(int(font.getlength(n)) for n in names)
    canvas = Image.new("RGB", (max(w, 3 * line // 2 + text_w + 8), h + line * len(names) + 4))
    canvas.paste((255, 255, 255), (0, 0, canvas.width, canvas.height))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, rgb) in enumerate(zip(names, palette, strict=True)):
        y = h + 2 + i * line
        box = (4, y + 2, 4 + line - 4, y + line - 2)
        draw.rectangle(box, fill=tuple(int(c) for c in rgb), outline=(0, 0, 0))
        draw.text((line + 6, y + 1), name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def class_overlay(image: np.ndarray, labels: np.ndarray, spec: ClassSet) -> np.ndarray:
    """The image with each foreground class tinted and outlined in its colour, and a legend.

    Example:
        >>> class_overlay(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8), spec)
        ...  # doctest: +SKIP
    """
    palette = spec.palette()
    out = image.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - TINT_ALPHA) * out[fg] + TINT_ALPHA * palette[labels[fg]].astype(np.float32)
    result = np.clip(np.round(out), 0, 255).astype(np.uint8)
    for k in range(1, spec.num_classes):
        result[edge(labels == k)] = palette[k]
    return with_legend(result, spec.foreground, palette[1:])
