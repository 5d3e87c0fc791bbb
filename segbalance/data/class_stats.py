"""Per-class statistics of a multiclass manifest, for ``segbalance stats``.

Per group (and over all rows): how many images contain each class (at least one pixel)
and the class's share of the group's counted pixels (the mean of its ``coverage_<name>``
column: every image weighs the same). Binary manifests get none of this.

Example:
    >>> class_block(np.array([[0.5, 0.5], [1.0, 0.0]]), ["background", "nail"])["nail"]
    {'images': 1, 'pixel_share': 0.25}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segbalance.text import table_lines


def class_block(cover: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{class: {"images": containing it, "pixel_share": mean fraction or None}}``."""
    cover = np.asarray(cover, np.float64).reshape(-1, len(names))
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        share = float(cover[:, k].mean()) if len(cover) else None
        out[name] = {"images": int((cover[:, k] > 0).sum()), "pixel_share": share}
    return out


def _share(value: float | None) -> str:
    """A pixel share as a percentage; small ones keep two decimals (rare classes are small)."""
    if value is None:
        return "-"
    pct = 100 * value
    return f"{pct:.2f}%" if 0 < pct < 1 else f"{pct:.1f}%"


def class_table_lines(stats: dict[str, Any]) -> list[str]:
    """Group x class: images containing the class and (its pixel share); empty for binary."""
    names = stats.get("classes")
    if not names:
        return []
    rows = []
    for group, block in [*stats["groups"].items(), ("all", stats["all"])]:
        cells = []
        for name in names:
            cell = block["classes"][name]
            cells.append(f"{cell['images']} ({_share(cell['pixel_share'])})")
        rows.append([group, *cells])
    body = table_lines(["group", *names], rows)
    head = "images containing each class (its share of the group's pixels):"
    return ["", head, *body[:-1], "-" * len(body[0]), body[-1]]
