"""Label masks: which rule reads a mask file as classes, and the reading itself.

A multiclass row's ``mask_rule`` is one of :data:`CLASS_RULES`: ``class-value`` reads gray
levels or palette indices by each class's ``value``, ``class-color`` reads RGB colours by
each class's ``color`` (see :mod:`segbalance.classes`). ``prepare`` checks every mask with
:func:`label_map`; training and evaluate read it with :func:`read_label_mask`, the same code.

Example:
    >>> rule = class_rule(Image.open("m.png"), spec)  # doctest: +SKIP
    >>> labels, unknown = label_map(Image.open("m.png"), spec, rule)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segbalance.classes import IGNORE_INDEX, ClassSet

#: Mask rules of multiclass rows (the manifest's ``mask_rule``).
CLASS_RULES = ("class-value", "class-color")


class ClassRuleError(ValueError):
    """A mask no class rule reads unambiguously (``fix`` says what to do)."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


def _palette_clash(img: Image.Image, spec: ClassSet) -> str | None:
    """A palette PNG whose index i is drawn in the colour the file gives another class."""
    palette = img.getpalette() or []
    by_colour = {
        str(list(rgb)): c for c, rgb in zip(spec.classes, spec.mask_colors(), strict=True) if rgb
    }
    for index in np.unique(np.asarray(img)):
        rgb = list(palette[3 * int(index) : 3 * int(index) + 3])
        other = by_colour.get(str(rgb))
        if other is not None and other.value != int(index):
            return (
                f"palette index {int(index)} is drawn {rgb}, the colour of class "
                f"'{other.name}' (value {other.value}), but palette masks are read by index"
            )
    return None


def class_rule(img: Image.Image, spec: ClassSet) -> str:
    """The rule a mask is read by: its values, or its colours when it is RGB(A) in colour.

    Gray, 16-bit and palette masks are read by value (a palette PNG's indices, as VOC label
    masks store classes). An RGB(A) mask whose three channels agree is gray saved as RGB.

    Raises:
        ClassRuleError: a colour mask while the classes file gives a class no colour; a
            palette mask whose palette draws an index in another class's colour.
    """
    if img.mode == "P" and any(c.color for c in spec.classes):
        clash = _palette_clash(img, spec)
        if clash:
            raise ClassRuleError(
                clash,
                "save the mask as RGB (PIL: Image.open(p).convert('RGB').save(p)) to read it "
                "by colour, or fix its palette so index = class value",
            )
    if img.mode not in ("RGB", "RGBA"):
        return "class-value"
    rgb = np.asarray(img.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return "class-value"
    if not spec.has_colors:
        missing = [
            c.name for c, rgb in zip(spec.classes, spec.mask_colors(), strict=True) if rgb is None
        ]
        raise ClassRuleError(
            f"a colour mask, but the classes file gives no colour for {', '.join(missing)}",
            "give every class a colour ('color: [R, G, B]'), or save the mask with class "
            "values (gray or palette PNG)",
        )
    return "class-color"


def _mask_pixels(img: Image.Image, rule: str) -> np.ndarray:
    """int64 [H, W] values (class-value) or 24-bit RGB codes (class-color)."""
    if rule == "class-color":
        rgb = np.asarray(img.convert("RGB"), np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if img.mode in ("RGB", "RGBA"):
        return np.asarray(img, np.int64)[..., 0]
    if img.mode in ("1", "LA", "PA"):
        img = img.convert("L") if img.mode != "PA" else img.getchannel(0)
    return np.asarray(img, np.int64).reshape(img.height, img.width)


def _code(rgb: tuple[int, int, int]) -> int:
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


def label_map(img: Image.Image, spec: ClassSet, rule: str) -> tuple[np.ndarray, list[str]]:
    """A mask as class indices: uint8 [H, W] (ignored pixels :data:`IGNORE_INDEX`).

    Returns:
        The indices, and the values (``"7"``) or colours (``"[12, 0, 255]"``) found that no
        class and not the ignore value names (up to 10; empty when the mask is good).
    """
    if rule not in CLASS_RULES:
        raise ValueError(f"unknown class rule '{rule}'; valid: {', '.join(CLASS_RULES)}")
    pixels = _mask_pixels(img, rule)
    if rule == "class-color":
        # Indices are class positions: a class without a colour keeps its place.
        lookup = {_code(rgb): i for i, rgb in enumerate(spec.mask_colors()) if rgb is not None}
        ignore = None if spec.ignore_color is None else _code(spec.ignore_color)
    else:
        lookup = {value: i for i, value in enumerate(spec.values)}
        ignore = spec.ignore
    if ignore is not None:
        lookup[ignore] = IGNORE_INDEX
    # One pass over the pixels whatever the number of distinct values (16-bit ids, edges).
    found, inverse = np.unique(pixels, return_inverse=True)
    index = np.array([lookup.get(int(v), -1) for v in found], np.int64)
    unknown = [int(v) for v, i in zip(found, index, strict=True) if i < 0]
    out = np.where(index < 0, IGNORE_INDEX, index).astype(np.uint8)[inverse.reshape(-1)]
    return out.reshape(pixels.shape), [_show(v, rule) for v in unknown[:10]]


def _show(value: int, rule: str) -> str:
    if rule == "class-color":
        return str([(value >> 16) & 255, (value >> 8) & 255, value & 255])
    return str(value)


def read_label_mask(path: str | Path, spec: ClassSet, rule: str) -> np.ndarray:
    """uint8 [H, W] class indices of a mask file (prepare has checked it; training reads it).

    Raises:
        ValueError: the mask holds values (or colours) no class names: it changed after
            prepare, and reading them as anything would train or score wrong labels.
    """
    with Image.open(path) as img:
        img.load()
        labels, unknown = label_map(img, spec, rule)
    if unknown:
        what = "colours" if rule == "class-color" else "values"
        raise ValueError(
            f"{what} {', '.join(unknown)} are no class of the manifest's classes "
            f"({', '.join(spec.names)}): the mask changed after 'segbalance prepare'; run "
            "prepare again"
        )
    return labels
