"""From a data root to a checked manifest: discover, check in parallel, split, write.

``prepare_dataset`` is what ``segbalance prepare`` and the demo call; ``build_manifest``
does the same in memory for stages that accept a data folder instead of a manifest.

Example:
    >>> result = prepare_dataset("data", valid_fraction=0.2, seed=0)
    >>> print(result.summary_table())
    >>> result.manifest_path
    PosixPath('data/segbalance/manifest.csv')
"""

from __future__ import annotations

import csv
import io
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbalance.data.check import DEFAULT_MAX_PIXELS, check_pairs
from segbalance.data.discover import Discovery, Reject, discover
from segbalance.data.folds import assign_folds, fold_table
from segbalance.data.manifest import (
    COLUMNS,
    DEFAULT_DIRNAME,
    Manifest,
    natural_key,
    natural_sort,
    sidecar_path,
    write_manifest,
)
from segbalance.data.mask_rules import SILENT_RULES, MaskChoice
from segbalance.data.paths import path_problem, root_relative
from segbalance.errors import InvalidDataError, Problem, UserError
from segbalance.io import (
    PRODUCER_PREFIX,
    check_output_path,
    check_replaceable_file,
    csv_header,
    json_object,
    write_text,
)
from segbalance.text import table_lines

REJECT_COLUMNS = ("image", "mask", "group", "problem", "fix")


@dataclass
class Scan:
    """A checked data root in memory: the manifest of good pairs and what was left out."""

    manifest: Manifest
    discovery: Discovery
    rejects: list[Reject]
    mask_rules: dict[str, int]
    split_given: bool


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

    def group_rows(self) -> list[tuple[str, int, int, int, int]]:
        """(group, pairs, train, valid, skipped) per group, natural order."""
        skipped = Counter(r.group or "(none)" for r in self.rejects)
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
        head = ("group", "pairs", "train", "valid", "skipped")
        rows = [tuple(map(str, r)) for r in self.group_rows()]
        totals = [sum(int(r[i]) for r in rows) for i in range(1, 5)]
        rows.append(("total", *map(str, totals)))
        lines = table_lines(head, rows)
        if self.manifest.fold is not None:  # prepare --folds K
            folds = fold_table(self.manifest)
            k = len(folds[0]) - 1 if folds else 0
            lines += ["", f"{k} folds (rows per group and fold; test rows are in none):"]
            lines += table_lines(("group", *(f"fold {f}" for f in range(k))), folds)
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


def _drop_outside(found: Discovery, root: Path) -> None:
    """Move pairs whose files really lie outside the root (symlinks) to the rejects.

    ``read_manifest`` refuses such rows, so a manifest holding them would be unusable.
    """
    real_root = root.resolve()
    kept = []
    for pair in found.pairs:
        names = (root_relative(pair.image, root), root_relative(pair.mask, root))
        bad = [(n, r) for n in names if (r := path_problem(n, root, real_root))]
        if not bad:
            kept.append(pair)
            continue
        fix = "copy the file into the data root, or pass --allow-outside-root"
        problem = Problem(bad[0][0], bad[0][1], fix)
        found.rejects.append(Reject(names[0], names[1], pair.group, problem))
    found.pairs[:] = kept


def assign_splits(
    keys: Sequence[str], groups: Sequence[str], valid_fraction: float, seed: int
) -> list[str]:
    """Split rows train/valid, stratified by group, reproducibly from ``seed``.

    Each group with n >= 2 rows gets ``round(n * valid_fraction)`` valid rows, at least 1
    and at most n - 1; a single-row group stays in train. A group's draw depends only on
    the seed, the group name and its sorted keys, so adding a group changes no other.

    Args:
        keys: a stable identity per row (e.g. the image path).
        groups: the group of each row.
        valid_fraction: in (0, 1).
        seed: the run seed.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {valid_fraction} must be between 0 and 1 (exclusive)")
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    out = ["train"] * len(keys)
    for g, rows in by_group.items():
        n = len(rows)
        if n < 2:
            continue
        n_valid = min(max(round(n * valid_fraction), 1), n - 1)
        ordered = sorted(rows, key=lambda i: natural_key(keys[i]))
        rng = np.random.default_rng([seed, zlib.crc32(g.encode("utf-8"))])
        for pos in rng.permutation(n)[:n_valid]:
            out[ordered[pos]] = "valid"
    return out


def scan(
    root: str | Path,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    skip_invalid: bool = False,
    groups_csv: str | Path | None = None,
    allow_outside_root: bool = False,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    mask_choice: MaskChoice = SILENT_RULES,
    folds: int = 0,
) -> Scan:
    """Discover and check every pair under ``root`` and split them; nothing is written.

    Raises:
        InvalidDataError: any problem while ``skip_invalid`` is False (the full table).
        UserError: no layout, or no valid pair at all; ``folds`` not 0 and below 2, or
            more than the train/valid pairs.
    """
    root = Path(root)
    if not 0.0 < valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {valid_fraction} must be between 0 and 1 (exclusive)")
    if folds and folds < 2:  # before any pair is checked
        raise UserError(f"--folds {folds} must be at least 2 (0: no folds)")
    found = discover(root, groups_csv, allow_outside_root)
    if not allow_outside_root:
        _drop_outside(found, root)
    names = [(root_relative(p.image, root), root_relative(p.mask, root)) for p in found.pairs]
    paths = [(str(p.image), str(p.mask)) for p in found.pairs]
    checks = check_pairs(
        paths, names, max_pixels=max_pixels, workers=workers, progress=progress, choice=mask_choice
    )
    rejects = list(found.rejects)
    for pair, name, res in zip(found.pairs, names, checks, strict=True):
        rejects += [Reject(name[0], name[1], pair.group, p) for p in res.problems]
    keep = [i for i, res in enumerate(checks) if res.ok]
    if rejects and not skip_invalid:
        raise InvalidDataError(
            [r.problem for r in rejects],
            f"{len(rejects)} problem(s) in {root} ({found.layout}); no manifest written. "
            "Fix them, or pass --skip-invalid to leave them out",
        )
    if not keep:
        raise UserError(
            f"no valid image/mask pairs in {root} ({found.layout}, {len(rejects)} left out); "
            "nothing to write"
        )
    keep.sort(key=lambda i: (natural_key(found.pairs[i].group), natural_key(names[i][0])))
    given = [found.pairs[i].split for i in keep]
    split_given = all(s is not None for s in given)
    if split_given:
        splits = [str(s) for s in given]
    else:
        groups = [found.pairs[i].group for i in keep]
        splits = assign_splits([names[i][0] for i in keep], groups, valid_fraction, seed)
    fold = None
    if folds:
        keys, kept_groups = [names[i][0] for i in keep], [found.pairs[i].group for i in keep]
        fold = np.array(assign_folds(keys, kept_groups, folds, seed, splits), np.int64)
    manifest = Manifest(
        root=root,
        image=tuple(names[i][0] for i in keep),
        mask=tuple(names[i][1] for i in keep),
        group=tuple(found.pairs[i].group for i in keep),
        split=tuple(splits),
        height=np.array([checks[i].height for i in keep]),
        width=np.array([checks[i].width for i in keep]),
        coverage=np.array([checks[i].coverage for i in keep]),
        mask_rule=tuple(checks[i].mask_rule for i in keep),
        orientation=np.array([checks[i].orientation for i in keep], np.int64),
        fold=fold,
    )
    if split_given:
        counts, valid = manifest.counts(), manifest.select(split="valid").counts()
        for g in manifest.groups:
            if counts[g] >= 2 and valid[g] == 0:
                found.notes.append(f"group {g} has no valid images in the split the layout gives")
    rules = Counter(manifest.mask_rule)
    return Scan(manifest, found, rejects, dict(rules), split_given)


def build_manifest(root: str | Path, **kwargs: object) -> Manifest:
    """The manifest :func:`prepare_dataset` would write, in memory (same keywords as scan)."""
    return scan(root, **kwargs).manifest  # type: ignore[arg-type]


def _rejects_csv(rejects: list[Reject]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(REJECT_COLUMNS)
    for r in rejects:
        writer.writerow([r.image, r.mask, r.group, r.problem.problem, r.problem.fix])
    return buf.getvalue()


def rejects_path_for(manifest_path: str | Path) -> Path:
    """``manifest.csv`` -> ``manifest_rejects.csv`` beside it."""
    path = Path(manifest_path)
    return path.with_name(f"{path.stem}_rejects.csv")


def is_manifest_sidecar(path: str | Path) -> bool:
    """True when ``path`` is the JSON that :func:`write_manifest` puts beside a manifest."""
    meta = json_object(path)
    tool = meta.get("tool") if meta is not None else None
    return isinstance(tool, str) and tool.startswith(PRODUCER_PREFIX) and "root" in (meta or {})


def is_manifest_file(path: str | Path) -> bool:
    """True when ``path`` is a manifest CSV prepare wrote: its columns and its sidecar."""
    header = csv_header(path)
    return header[: len(COLUMNS)] == COLUMNS and is_manifest_sidecar(sidecar_path(path))


def _is_rejects_file(path: Path) -> bool:
    return csv_header(path) == REJECT_COLUMNS


def check_prepare_outputs(out_path: Path) -> None:
    """Refuse, before any work, outputs that cannot be written or are a user's own files.

    The manifest, its sidecar and the rejects list may each replace (or, the rejects,
    delete) only what an earlier ``prepare`` wrote.
    """
    side, rejects = sidecar_path(out_path), rejects_path_for(out_path)
    for target, what, recognise in (
        (out_path, "a manifest", is_manifest_file),
        (side, "the sidecar JSON of a manifest", is_manifest_sidecar),
        (rejects, "a rejects list", _is_rejects_file),
    ):
        check_output_path(target, "--out", folder=False)
        check_replaceable_file(target, "--out", f"{what} segbalance wrote", recognise)


def prepare_dataset(
    root: str | Path,
    out: str | Path | None = None,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    skip_invalid: bool = False,
    groups_csv: str | Path | None = None,
    allow_outside_root: bool = False,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    mask_choice: MaskChoice = SILENT_RULES,
    folds: int = 0,
) -> PrepareResult:
    """Check a data root and write its manifest (and rejects CSV with ``skip_invalid``).

    Args:
        root: the data root (layouts: see :mod:`segbalance.data.discover`).
        out: manifest CSV; default ``root/segbalance/manifest.csv``.
        valid_fraction: share of each group held out when the layout gives no split.
        seed: fixes the split.
        skip_invalid: leave bad pairs out (listed in ``<out stem>_rejects.csv``).
        groups_csv: ``image,group`` CSV for layout (c).
        allow_outside_root: accept CSV paths outside the root (stored absolute).
        workers: checking threads; default every core.
        max_pixels: pixel cap per image.
        progress: progress bar on stderr; None shows it on a terminal only.
        mask_choice: the user's mask rule (``--mask-threshold``, ``--mask-channel``); the
            rule each mask is read by lands in its row's ``mask_rule``.
        folds: K >= 2 records a group-stratified fold id per row (``fold`` column, test
            rows -1; :mod:`segbalance.data.folds`); 0 writes no fold column.

    Raises:
        InvalidDataError: problems found and ``skip_invalid`` is False; nothing is written.
    """
    root = Path(root)
    out_path = Path(out) if out is not None else root / DEFAULT_DIRNAME / "manifest.csv"
    if out_path.suffix.lower() != ".csv":
        raise UserError(f"--out {out_path} must be a .csv file")
    check_prepare_outputs(out_path)  # now, not after checking every pair
    done = scan(
        root,
        valid_fraction=valid_fraction,
        seed=seed,
        skip_invalid=skip_invalid,
        groups_csv=groups_csv,
        allow_outside_root=allow_outside_root,
        workers=workers,
        max_pixels=max_pixels,
        progress=progress,
        mask_choice=mask_choice,
        folds=folds,
    )
    rejects_path = rejects_path_for(out_path)
    if done.rejects:
        write_text(rejects_path, _rejects_csv(done.rejects))
    else:
        rejects_path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    info = {
        "layout": done.discovery.layout,
        "mask_rules": done.mask_rules,
        "split": "from layout" if done.split_given else f"seeded, valid_fraction={valid_fraction}",
        "seed": seed,
        "skipped": len(done.rejects),
        "ignored_files": len(done.discovery.ignored),
        # read_manifest checks the paths of every row unless this says they may leave the root
        "allow_outside_root": allow_outside_root,
    }
    if folds:  # only then: the sidecar of a run without folds stays as it was
        info["folds"] = f"group-stratified, seeded, folds={folds}"
    write_manifest(done.manifest, out_path, info)
    return PrepareResult(
        manifest=done.manifest,
        manifest_path=out_path,
        rejects_path=rejects_path if done.rejects else None,
        layout=done.discovery.layout,
        rejects=done.rejects,
        ignored=done.discovery.ignored,
        notes=done.discovery.notes,
        mask_rules=done.mask_rules,
    )
