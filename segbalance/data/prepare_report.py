"""What ``prepare`` did, as the table it prints: groups, splits, classes, rules, rejects.

Example:
    >>> result = prepare_dataset("data")  # doctest: +SKIP
    >>> print(result.summary_table())  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbalance.data.class_groups import NO_CLASS_GROUP, rarity_table
from segbalance.data.discover import Reject
from segbalance.data.folds import fold_table
from segbalance.data.manifest import SPLITS, Manifest, natural_sort
from segbalance.data.splits import SELECT
from segbalance.text import table_lines


def class_summary(manifest: Manifest, source: str | None, group_by: str) -> list[str]:
    """Per class: its value, the images of each split containing it, its train pixel share."""
    spec, cover = manifest.classes, manifest.class_coverage
    assert spec is not None and cover is not None
    split = np.array(manifest.split)
    splits = [s for s in SPLITS if (split == s).any()]
    train = split == "train"
    rows = []
    for k, c in enumerate(spec.classes):
        counts = [str(int((cover[split == s, k] > 0).sum())) for s in splits]
        pixels = float(cover[train, k].mean()) if train.any() else 0.0
        rows.append((c.name, str(c.value), *counts, f"{100 * pixels:.1f}%"))
    head = ("class", "value", *splits, "train pixels")
    shown = f" of {source}" if source else ""
    lines = [f"classes{shown} (images containing each class; share of the train pixels):"]
    lines += table_lines(head, rows)
    if group_by != "folder":
        rarity = rarity_table(spec, cover, train)
        shares = ", ".join(f"{n} {100 * v:.0f}%" for n, v in rarity.items())
        empty = not (cover[:, 1:] > 0).any(axis=1).all()
        lines.append(
            f"groups ({group_by}): the rarest foreground class of each image, rarity = share "
            f"of train images containing it ({shares})"
            + (f"; '{NO_CLASS_GROUP}': no foreground class" if empty else "")
        )
        lines += [
            f"note: class {n} is in no train image, so its group has none to train on"
            for n, v in rarity.items()
            if v == 0 and (cover[:, spec.names.index(n)] > 0).any()
        ]
    return lines


@dataclass
class PrepareResult:
    """What :func:`prepare_dataset` did."""

    manifest: Manifest
    manifest_path: Path
    rejects_path: Path | None
    layout: str
    rejects: list[Reject] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mask_rules: dict[str, int] = field(default_factory=dict)
    group_by: str = "folder"
    classes_source: str | None = None

    def group_rows(self) -> list[tuple[str, int, int, int, int]]:
        """(group, pairs, train, valid, skipped) per group, natural order.

        Skipped pairs count under their folder group; with groups drawn from classes
        (their masks may be unreadable) under ``(skipped)``.
        """
        if self.group_by == "folder":
            skipped = Counter(r.group or "(none)" for r in self.rejects)
        else:
            skipped = Counter({"(skipped)": len(self.rejects)} if self.rejects else {})
        names = natural_sort(set(self.manifest.groups) | set(skipped))
        rows = []
        for g in names:
            splits = [
                s for s, gg in zip(self.manifest.split, self.manifest.group, strict=True) if gg == g
            ]
            rows.append((g, len(splits), splits.count("train"), splits.count("valid"), skipped[g]))
        return rows

    def summary_table(self) -> str:
        """Per-group table plus totals and the facts worth a glance."""
        head: tuple[str, ...] = ("group", "pairs", "train", "valid", "skipped")
        rows = [tuple(map(str, r)) for r in self.group_rows()]
        if SELECT in self.manifest.split:  # prepare --selection-fraction: a column more
            pairs = zip(self.manifest.group, self.manifest.split, strict=True)
            picked = Counter(g for g, s in pairs if s == SELECT)
            head = (*head[:4], SELECT, head[4])
            rows = [(*r[:4], str(picked[r[0]]), r[4]) for r in rows]
        totals = [sum(int(r[i]) for r in rows) for i in range(1, len(head))]
        rows.append(("total", *map(str, totals)))
        lines = table_lines(head, rows)
        if self.manifest.fold is not None:  # prepare --folds K
            folds = fold_table(self.manifest)
            k = len(folds[0]) - 1 if folds else 0
            lines += ["", f"{k} folds (rows per group and fold; test and select rows are in none):"]
            lines += table_lines(("group", *(f"fold {f}" for f in range(k))), folds)
        if self.manifest.classes is not None:
            lines += ["", *class_summary(self.manifest, self.classes_source, self.group_by)]
        rules = ", ".join(f"{k} x{v}" for k, v in sorted(self.mask_rules.items()))
        lines += ["", f"layout: {self.layout}", f"mask rules applied: {rules or 'none'}"]
        if self.ignored:
            kinds = Counter(
                Path(p).name
                if Path(p).name.startswith(".") or not Path(p).suffix
                else Path(p).suffix.lower()
                for p in self.ignored
            )
            shown = ", ".join(f"{k} x{v}" for k, v in kinds.most_common(5))
            lines.append(f"ignored {len(self.ignored)} non-image file(s): {shown}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"manifest: {self.manifest_path}")
        if self.rejects_path:
            lines.append(f"skipped {len(self.rejects)} item(s), listed in {self.rejects_path}:")
            lines += [f"  {r.problem.file}: {r.problem.problem}" for r in self.rejects[:10]]
            if len(self.rejects) > 10:
                lines.append(f"  ... and {len(self.rejects) - 10} more")
        return "\n".join(lines)
