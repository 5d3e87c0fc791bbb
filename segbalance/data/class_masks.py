"""Checking a multiclass mask against its classes file (``prepare --classes``).

Each mask is read by the rule :func:`segbalance.label_masks.class_rule` picks (``class-value``:
gray, 16-bit or palette index; ``class-color``: RGB colour) into class indices with
:func:`segbalance.label_masks.label_map`. A value or colour no class names is a problem naming
the mask, the values found and the classes there are; a JPEG mask is always refused (its
codec moves class values near edges, also onto other classes' values, so even a JPEG whose
values all look right is not trustworthy). What a good mask gives: its per-class pixel
fractions (the manifest's ``coverage_<name>`` columns) and its rule.

Example:
    >>> choice = ClassChoice(load_classes("classes.yaml"), "classes.yaml")  # doctest: +SKIP
    >>> check_class_mask(Image.open("m.png"), "Masks/0/m.png", choice)  # doctest: +SKIP
    (array([0.9, 0.08, 0.02]), 'class-value')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segbalance.classes import ClassSet, class_pixel_fractions, load_classes
from segbalance.errors import Problem, UserError
from segbalance.label_masks import ClassRuleError, class_rule, label_map

#: PIL modes a label mask may have (what training's decoder reads to the same values).
LABEL_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L")
JPEG_FIX = (
    "export the mask losslessly as PNG from where it was drawn (converting this JPEG "
    "to PNG keeps the changed values)"
)


@dataclass(frozen=True)
class ClassChoice:
    """The classes masks are checked against, and how problems name their file."""

    spec: ClassSet
    source: str


def class_choice(classes: str | Path | ClassSet | ClassChoice | None) -> ClassChoice | None:
    """A :class:`ClassChoice` from a classes file (loaded and checked) or a ClassSet.

    Raises:
        UserError: the file is missing or invalid (see :func:`segbalance.classes.load_classes`).
    """
    if classes is None or isinstance(classes, ClassChoice):
        return classes
    if isinstance(classes, ClassSet):
        return ClassChoice(classes, "the classes")
    path = Path(classes)
    if path.is_dir():
        inside = sorted(path.glob("*.y*ml"))
        hint = f" ({', '.join(str(p) for p in inside[:3])} there?)" if inside else ""
        raise UserError(f"classes file {path} is a folder; give the YAML file itself{hint}")
    return ClassChoice(load_classes(path), str(classes))


def describe_classes(spec: ClassSet, rule: str) -> str:
    """The classes as a mask encodes them: ``0 background, 1 nail; ignore 255``."""
    if rule == "class-color":
        colours = spec.mask_colors()
        shown = [
            f"{c.name} {list(rgb or ())}" for c, rgb in zip(spec.classes, colours, strict=True)
        ]
        ignore = None if spec.ignore_color is None else str(list(spec.ignore_color))
    else:
        shown = [f"{c.value} {c.name}" for c in spec.classes]
        ignore = None if spec.ignore is None else str(spec.ignore)
    return ", ".join(shown) + ("" if ignore is None else f"; ignore {ignore}")


def _unknown_problem(shown: str, found: list[str], rule: str, choice: ClassChoice) -> Problem:
    what = "colours" if rule == "class-color" else "values"
    more = ", ..." if len(found) >= 10 else ""
    verb = "is" if len(found) == 1 else "are"
    if len(found) == 1:
        what = what[:-1]
    return Problem(
        shown,
        f"{what} {', '.join(found)}{more} {verb} no class of {choice.source} "
        f"({describe_classes(choice.spec, rule)})",
        _unknown_fix(found, rule, choice),
    )


def _unknown_fix(found: list[str], rule: str, choice: ClassChoice) -> str:
    """How to read values or colours no class names: add them, ignore them or repaint."""
    if rule == "class-color":
        ignore = "'ignore_color: [R, G, B]' for pixels to leave out"
    else:
        ignore = "'ignore: V' for pixels to leave out"
    big = [v for v in found if v.isdigit() and int(v) > 255]
    if big:  # 16-bit masks: class values are 0..255
        return (
            f"class values are 0..255, and this mask holds {', '.join(big)}: remap it to "
            "values 0..255 (one per class) and save it as an 8-bit PNG"
        )
    return (
        f"add the missing class(es) to {choice.source} ({ignore}), or repaint the mask "
        "with class values only (no anti-aliasing, resize with nearest neighbour)"
    )


def check_class_mask(
    msk: Image.Image, shown: str, choice: ClassChoice
) -> tuple[np.ndarray, str] | Problem:
    """Per-class pixel fractions (float64 [K]) and the rule of a decoded mask, or its problem.

    Args:
        msk: the decoded mask.
        shown: how the mask is named in the problem.
        choice: the classes (and the file they come from).
    """
    if msk.mode not in LABEL_MODES:
        return Problem(
            shown,
            f"mask mode {msk.mode} is not a supported label mask",
            "save it as an 8-bit gray or palette PNG holding the class values",
        )
    try:
        rule = class_rule(msk, choice.spec)
    except ClassRuleError as err:
        return Problem(shown, f"{err} ({choice.source})", err.fix)
    labels, unknown = label_map(msk, choice.spec, rule)
    if msk.format == "JPEG":
        found = f" (values no class names: {', '.join(unknown)})" if unknown else ""
        problem = f"JPEG label mask: lossy compression moves class values near edges{found}"
        return Problem(shown, problem, JPEG_FIX)
    if unknown:
        return _unknown_problem(shown, unknown, rule, choice)
    return class_pixel_fractions(labels, choice.spec.num_classes), rule
