"""The manifest CSV's columns and the parsing of one of its rows (checked, not trusted).

Split off :mod:`segbalance.data.manifest`, which holds the :class:`Manifest` type, its
writer and the reader that calls :func:`parse_row` for every line.

``orientation`` is optional too (the image's EXIF orientation, 1-8; absent means 1).
A multiclass manifest (``prepare --classes``) adds one ``coverage_<name>`` column per class
(its share of the mask's counted pixels) and holds the classes in its sidecar; its rows'
``mask_rule`` is ``class-value`` or ``class-color`` and ``coverage`` is the share of pixels
in a foreground class. ``fold`` is optional: ``prepare --folds K`` writes it (0..K-1, -1 for
rows outside the folds such as the test split); a manifest without it reads as before, and
the writer adds the column only when the manifest has folds, so older manifests stay
byte-identical.
"""

from __future__ import annotations

import math
from typing import Any

from segbalance.data.mask_rules import parse_rule
from segbalance.errors import Problem
from segbalance.label_masks import CLASS_RULES

COLUMNS = ("image", "mask", "group", "split", "height", "width", "coverage", "mask_rule")
FOLD_COLUMN = "fold"
ORIENTATION_COLUMN = "orientation"  # EXIF orientation of the image, written when any is not 1
SPLITS = ("train", "valid", "select", "test")  # select: picks the best epoch (splits.py)
CLASS_COVERAGE_PREFIX = "coverage_"  # + class name: that class's share of the mask's pixels
NO_FOLD = -1  # a row outside the folds (test split), or a cell left empty


def parse_orientation(text: str, where: str, problems: list[Problem]) -> int:
    """An orientation cell: empty means 1 (stored as shown); else an integer 1..8."""
    if not text:
        return 1
    if text.isdigit() and 1 <= int(text) <= 8:
        return int(text)
    problems.append(
        Problem(where, f"orientation '{text}' is not 1..8", "run 'segbalance prepare' again")
    )
    return 1


def format_float(value: float) -> str:
    """The shortest text that reads back to the same float."""
    return repr(float(value))


def parse_fold(text: str, where: str, problems: list[Problem]) -> int:
    """A fold cell: empty means -1 (not folded); else an integer >= -1."""
    if not text:
        return NO_FOLD
    try:
        fold = int(text)
        if fold < NO_FOLD:
            raise ValueError
    except ValueError:
        problems.append(
            Problem(
                where,
                f"fold '{text}' is not an integer >= -1",
                "fix the fold column, or run 'segbalance prepare --folds K' again",
            )
        )
        return NO_FOLD
    return fold


def parse_row(
    row: dict[str, str], where: str, problems: list[Problem], folded: bool = False
) -> tuple[Any, ...] | None:
    """One CSV row as ``(image, mask, group, split, height, width, coverage, rule[, fold])``.

    Problems are appended to ``problems`` (with ``where``, the ``file:line``); None when
    the row has any. ``folded``: the CSV has a fold column, whose value ends the tuple.
    """
    bad = len(problems)
    values = {c: (row.get(c) or "").strip() for c in COLUMNS}
    for col in ("image", "mask", "group"):
        if not values[col]:
            problems.append(Problem(where, f"empty '{col}'", f"fill in the {col} column"))
    if values["split"] not in SPLITS:
        problems.append(
            Problem(
                where,
                f"split '{values['split']}' is not one of {', '.join(SPLITS)}",
                "fix the split column",
            )
        )
    try:
        if values["mask_rule"] not in CLASS_RULES:
            parse_rule(values["mask_rule"])
    except ValueError as err:
        problems.append(Problem(where, str(err), "run 'segbalance prepare' again"))
    fold = parse_fold((row.get(FOLD_COLUMN) or "").strip(), where, problems) if folded else None
    try:
        height, width = int(values["height"]), int(values["width"])
        coverage = float(values["coverage"])
        if height <= 0 or width <= 0 or not (0.0 <= coverage <= 1.0) or math.isnan(coverage):
            raise ValueError
    except ValueError:
        problems.append(
            Problem(
                where,
                "height/width must be positive integers and coverage in [0, 1]",
                "run 'segbalance prepare' again to recompute them",
            )
        )
        return None
    if len(problems) > bad:
        return None
    parsed = (
        *(values[c] for c in ("image", "mask", "group", "split")),
        height,
        width,
        coverage,
        values["mask_rule"],
    )
    return parsed if fold is None else (*parsed, fold)


def class_columns(names: list[str]) -> list[str]:
    """The per-class coverage columns of a multiclass manifest, ``coverage_<name>``."""
    return [f"{CLASS_COVERAGE_PREFIX}{n}" for n in names]


def parse_class_coverage(
    row: dict[str, str], columns: list[str], where: str, problems: list[Problem], classes: bool
) -> list[float]:
    """The ``coverage_<name>`` cells of a row, each a fraction in [0, 1]; [] for binary.

    ``classes``: the sidecar holds classes. A row whose ``mask_rule`` is of the other kind is
    a problem: the CSV and its sidecar do not belong together.
    """
    rule = (row.get("mask_rule") or "").strip()
    if (rule in CLASS_RULES) != classes:
        kind = "a multiclass" if rule in CLASS_RULES else "a binary"
        held = "holds classes" if classes else "holds no classes (was it replaced or lost?)"
        problems.append(
            Problem(
                where,
                f"mask_rule '{rule}' is {kind} rule, but the manifest's .json sidecar {held}",
                "keep the CSV with the sidecar prepare wrote beside it, or run 'segbalance "
                "prepare' again (with --classes FILE for label masks)",
            )
        )
    out: list[float] = []
    if not classes:
        return out
    for col in columns:
        text = (row.get(col) or "").strip()
        try:
            value = float(text)
            if not 0.0 <= value <= 1.0:
                raise ValueError
        except ValueError:
            problems.append(
                Problem(where, f"{col} '{text}' is not a fraction in [0, 1]", "run prepare again")
            )
            value = 0.0
        out.append(value)
    return out


def separator_hint(columns: list[str]) -> str:
    """A note when a header read as one column holds ';' or tabs: the wrong separator.

    Excel writes CSV with semicolons in locales whose decimal mark is a comma.
    """
    if len(columns) == 1 and (";" in columns[0] or "\t" in columns[0]):
        sep = "semicolons" if ";" in columns[0] else "tabs"
        return f". It looks separated by {sep}: save it comma-separated (CSV UTF-8)"
    return ""
