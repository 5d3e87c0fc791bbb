"""Per-group statistics of a manifest: counts, mask coverage, empty masks, image sizes.

Three views of the same numbers: a dict (JSON-able, :func:`compute_stats`), a terminal
table (:func:`format_stats_table`) and a figure (:func:`plot_stats`) with images per group
(train/valid stacked) beside the coverage distribution per group. A multiclass manifest
adds, per group, the images containing each class and its pixel share
(:mod:`segbalance.data.class_stats`); coverage is then the share of foreground-class pixels.

Example:
    >>> stats = compute_stats(read_manifest("data/segbalance/manifest.csv"))
    >>> print(format_stats_table(stats))
    >>> plot_stats(stats, "stats.png")
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segbalance.data.class_stats import class_block, class_table_lines
from segbalance.data.manifest import SPLITS, Manifest
from segbalance.errors import UserError
from segbalance.io import (
    atomic_path,
    check_output_path,
    check_replaceable_file,
    figure_metadata,
    is_our_figure,
    json_has_keys,
    write_text,
)
from segbalance.text import table_lines

QUANTILES = {"q10": 0.10, "q25": 0.25, "median": 0.50, "q75": 0.75, "q90": 0.90}
SPLIT_COLOURS = {"train": "#4C72B0", "valid": "#DD8452", "test": "#55A868"}
PLOT_FORMATS = (".png", ".svg", ".pdf")
#: Keys every stats JSON has: an existing --json file is replaced only when it has them.
STATS_KEYS = ("groups_order", "imbalance", "groups", "all")


def _coverage_stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    out = {"mean": float(values.mean())}
    out.update({k: float(np.quantile(values, q)) for k, q in QUANTILES.items()})
    out["min"], out["max"] = float(values.min()), float(values.max())
    return out


def _size_stats(height: np.ndarray, width: np.ndarray) -> dict[str, Any]:
    if height.size == 0:
        return {"distinct": []}
    pairs = Counter(zip(height.tolist(), width.tolist(), strict=True))
    distinct = [
        {"height": h, "width": w, "images": n}
        for (h, w), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return {
        "min_height": int(height.min()),
        "max_height": int(height.max()),
        "min_width": int(width.min()),
        "max_width": int(width.max()),
        "distinct": distinct,
    }


def _block(manifest: Manifest, rows: np.ndarray, splits: list[str]) -> dict[str, Any]:
    split = np.array(manifest.split, dtype=object)[rows]
    rules = Counter(np.array(manifest.mask_rule, dtype=object)[rows].tolist())
    coverage = manifest.coverage[rows]
    block = {
        "images": int(rows.size),
        "splits": {s: int((split == s).sum()) for s in splits},
        "coverage": _coverage_stats(coverage),
        "empty_masks": int((coverage == 0).sum()),
        "sizes": _size_stats(manifest.height[rows], manifest.width[rows]),
        "mask_rules": dict(sorted(rules.items())),
    }
    if manifest.classes is not None and manifest.class_coverage is not None:
        block["classes"] = class_block(manifest.class_coverage[rows], manifest.classes.names)
    return block


def compute_stats(manifest: Manifest) -> dict[str, Any]:
    """Per-group and overall statistics of a manifest (JSON-able).

    Coverage is the foreground fraction of a mask (0..1); quantiles use numpy's linear
    interpolation. ``splits`` lists the splits present, train/valid/test order.

    Args:
        manifest: rows to describe; every group of ``manifest.groups`` gets an entry
            (a group without rows has ``images == 0`` and ``coverage is None``).

    Returns:
        ``{"root", "images", "groups_order", "splits", "imbalance", "groups": {g: block},
        "all": block}`` where a block has ``images, splits, coverage {mean, q10, q25,
        median, q75, q90, min, max}, empty_masks, sizes, mask_rules``. Multiclass adds
        ``"classes": [names]`` and per block ``classes {name: {images, pixel_share}}``.
    """
    present = set(manifest.split)
    splits = [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))
    group_ids = manifest.group_ids
    groups = {
        g: _block(manifest, np.flatnonzero(group_ids == i), splits)
        for i, g in enumerate(manifest.groups)
    }
    sizes = [b["images"] for b in groups.values() if b["images"] > 0]
    out = {
        "root": str(manifest.root),
        "images": len(manifest),
        "groups_order": manifest.groups,
        "splits": splits,
        # largest group over smallest non-empty group: how much balancing matters
        "imbalance": (max(sizes) / min(sizes)) if sizes else None,
        "groups": groups,
        "all": _block(manifest, np.arange(len(manifest)), splits),
    }
    if manifest.classes is not None and manifest.class_coverage is not None:
        out["classes"] = manifest.classes.names  # only then: binary JSON keeps its keys
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _size_text(sizes: dict[str, Any]) -> str:
    distinct = sizes["distinct"]
    if not distinct:
        return "-"
    if len(distinct) == 1:
        return f"{distinct[0]['height']}x{distinct[0]['width']}"
    return (
        f"{sizes['min_height']}-{sizes['max_height']}x{sizes['min_width']}-{sizes['max_width']}"
        f" ({len(distinct)} sizes)"
    )


def format_stats_table(stats: dict[str, Any]) -> str:
    """The statistics as an aligned text table, one row per group plus a total.

    Coverage columns are percentages of the image; ``share`` is the group's part of all
    images; size is ``HxW`` or the ranges with the number of distinct sizes.
    """
    splits = stats["splits"]
    head = ["group", "images", *splits, "share", "cov mean", "median", "q10", "q90", "empty"]
    head.append("size HxW")
    total = max(stats["images"], 1)
    rows = []
    for name, block in [*stats["groups"].items(), ("all", stats["all"])]:
        cov = block["coverage"] or {}
        rows.append(
            [
                name,
                str(block["images"]),
                *(str(block["splits"][s]) for s in splits),
                f"{100 * block['images'] / total:.1f}%",
                *(_pct(cov.get(k)) for k in ("mean", "median", "q10", "q90")),
                str(block["empty_masks"]),
                _size_text(block["sizes"]),
            ]
        )
    # group name left, numbers right, the size text (last) left; a rule above the total
    body = table_lines(head, rows, align="l" + "r" * (len(head) - 2) + "l")
    lines = [*body[:-1], "-" * len(body[0]), body[-1]]
    if stats["imbalance"] is not None:
        lines.append(f"largest / smallest group: {stats['imbalance']:.1f}x")
    lines += class_table_lines(stats)
    return "\n".join(lines)


def is_stats_json(path: str | Path) -> bool:
    """True when ``path`` is a JSON file that ``segbalance stats --json`` wrote."""
    return json_has_keys(path, STATS_KEYS)


def check_stats_outputs(json_path: str | Path | None, plot_path: str | Path | None) -> None:
    """Refuse, before any work, outputs that cannot be written or would replace a user's file.

    Raises:
        UserError: a bad plot suffix, an unwritable place, or an existing file that is
            not an earlier stats JSON or figure of segbalance.
    """
    if json_path is not None:
        check_output_path(json_path, "--json", folder=False)
        check_replaceable_file(json_path, "--json", "an earlier stats JSON", is_stats_json)
    if plot_path is not None:
        check_plot_path(plot_path)
        check_output_path(plot_path, "--plot", folder=False)
        check_replaceable_file(plot_path, "--plot", "a figure segbalance drew", is_our_figure)


def write_stats_json(stats: dict[str, Any], path: str | Path) -> Path:
    """Write the statistics as indented JSON, atomically (never over a user's file)."""
    check_replaceable_file(path, "--json", "an earlier stats JSON", is_stats_json)
    write_text(path, json.dumps(stats, indent=2) + "\n")
    return Path(path)


def _plot_counts(ax: Any, stats: dict[str, Any]) -> None:
    names = stats["groups_order"]
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    top = max([b["images"] for b in stats["groups"].values()] + [1])
    for split in stats["splits"]:
        values = np.array([stats["groups"][g]["splits"][split] for g in names], dtype=float)
        colour = SPLIT_COLOURS.get(split, "#8172B3")
        ax.bar(x, values, 0.7, bottom=bottom, color=colour, label=split, edgecolor="white")
        for xi, v, b in zip(x, values, bottom, strict=True):
            if v >= 0.08 * top:  # only where the number fits inside its segment
                ax.text(
                    xi,
                    b + v / 2,
                    f"{int(v)}",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=9,
                    fontweight="bold",
                )
        bottom += values
    total = max(stats["images"], 1)
    for xi, g in zip(x, names, strict=True):
        n = stats["groups"][g]["images"]
        ax.text(
            xi,
            n + 0.015 * top,
            f"{n}\n{100 * n / total:.0f}%",
            ha="center",
            va="bottom",
            fontsize=10,
        )
    ax.set_xticks(x, names)
    ax.set_ylim(0, top * 1.18)
    ax.set_xlabel("group")
    ax.set_ylabel("images")
    ax.set_title("Images per group (on top: total and share of all images)")
    ax.legend(title="split", frameon=False, loc="upper right")


def _plot_coverage(ax: Any, stats: dict[str, Any]) -> None:
    names = stats["groups_order"]
    boxes, positions, ticks = [], [], []
    for i, g in enumerate(names):
        block = stats["groups"][g]
        cov = block["coverage"]
        empty = block["empty_masks"]
        ticks.append(f"{g}\n{empty} empty" if empty else g)
        if cov is None:
            continue
        pct = {k: 100 * v for k, v in cov.items()}
        boxes.append(
            {
                "label": g,
                "med": pct["median"],
                "q1": pct["q25"],
                "q3": pct["q75"],
                "whislo": pct["q10"],
                "whishi": pct["q90"],
                "mean": pct["mean"],
                "fliers": [pct["min"], pct["max"]],
            }
        )
        positions.append(i)
    if boxes:
        ax.bxp(
            boxes,
            positions=positions,
            widths=0.55,
            showmeans=True,
            patch_artist=True,
            boxprops={"facecolor": "#C9D6EA", "edgecolor": "#4C72B0"},
            medianprops={"color": "#1B3A6B", "linewidth": 2},
            meanprops={"marker": "D", "markerfacecolor": "#DD8452", "markeredgecolor": "none"},
            flierprops={"marker": "_", "markeredgecolor": "#777777", "markersize": 10},
        )
    ax.set_xticks(np.arange(len(names)), ticks)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("group")
    ax.set_ylabel("foreground pixels (% of image)")
    ax.set_title("Mask coverage per group")
    ax.text(
        0.99,
        0.99,
        "box 25-75%, line median, whiskers 10-90%,\ndiamond mean, dashes min/max",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        color="#555555",
    )


def check_plot_path(path: str | Path) -> Path:
    """The plot path, or a UserError when its suffix is not a format we write."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_FORMATS:
        raise UserError(
            f"plot file {path} must end in {', '.join(PLOT_FORMATS)}; e.g. --plot stats.png"
        )
    return path


def plot_stats(stats: dict[str, Any], path: str | Path) -> Path:
    """Draw counts per group and coverage per group side by side; write atomically.

    Args:
        stats: the output of :func:`compute_stats`.
        path: ``.png`` (or ``.svg``/``.pdf``) file to write.
    """
    path = check_plot_path(path)
    # A bare Figure with the Agg canvas: no pyplot state, no display needed.
    fig = Figure(figsize=(13, 5.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.15])
    _plot_counts(left, stats)
    _plot_coverage(right, stats)
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    title = f"{stats['images']} images in {len(stats['groups'])} groups"
    if stats["imbalance"] is not None:
        title += f", largest group {stats['imbalance']:.1f}x the smallest"
    fig.suptitle(title, fontsize=13, fontweight="bold")
    check_replaceable_file(path, "--plot", "a figure segbalance drew", is_our_figure)
    fmt = path.suffix.lower()[1:]
    with atomic_path(path) as tmp:
        # the stamp is how a later run knows this file is its own and may replace it
        fig.savefig(tmp, format=fmt, metadata=figure_metadata(fmt))
    return path
