"""From a data root to a checked manifest: discover, check in parallel, split, write.

``prepare_dataset`` is what ``segbalance prepare`` and the demo call; ``build_manifest``
does the same in memory for stages that accept a data folder instead of a manifest. With
``classes`` every mask is checked against a classes file (:mod:`segbalance.data.class_masks`)
and ``group_by`` may draw the groups from the classes (:mod:`segbalance.data.class_groups`):
the split is decided first, rarity then measured on its train rows.

Example:
    >>> result = prepare_dataset("data", valid_fraction=0.2, seed=0)
    >>> print(result.summary_table())
    >>> result.manifest_path
    PosixPath('data/segbalance/manifest.csv')
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segbalance.classes import ClassSet
from segbalance.data.check import DEFAULT_MAX_PIXELS, PairCheck, check_pairs
from segbalance.data.class_groups import check_group_by, class_groups, rarity_table, split_strata
from segbalance.data.class_masks import ClassChoice, class_choice
from segbalance.data.discover import Discovery, Reject, discover
from segbalance.data.folds import assign_folds
from segbalance.data.manifest import DEFAULT_DIRNAME, Manifest, natural_key, write_manifest
from segbalance.data.mask_rules import SILENT_RULES, MaskChoice
from segbalance.data.paths import path_problem, root_relative
from segbalance.data.prepare_outputs import (
    REJECT_COLUMNS,
    check_prepare_outputs,
    is_manifest_file,
    is_manifest_sidecar,
    rejects_csv,
    rejects_path_for,
)
from segbalance.data.prepare_report import PrepareResult
from segbalance.data.splits import assign_splits, check_selection_fraction, draw_selection
from segbalance.errors import InvalidDataError, Problem, UserError
from segbalance.io import write_text

# These live in prepare_report and prepare_outputs; callers may take them from here.
__all__ = ["REJECT_COLUMNS", "PrepareResult", "Scan", "assign_splits", "build_manifest"]
__all__ += ["check_prepare_outputs", "is_manifest_file", "is_manifest_sidecar"]
__all__ += ["prepare_dataset", "rejects_path_for", "scan"]


@dataclass
class Scan:
    """A checked data root in memory: the manifest of good pairs and what was left out."""

    manifest: Manifest
    discovery: Discovery
    rejects: list[Reject]
    mask_rules: dict[str, int]
    split_given: bool


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


def _options(
    fractions: tuple[float, float],
    folds: int,
    mask_choice: MaskChoice,
    classes: str | Path | ClassSet | ClassChoice | None,
    group_by: str,
) -> ClassChoice | None:
    """Refuse bad options before any pair is checked; the classes, loaded and checked.

    ``fractions``: (valid, selection) shares.
    """
    valid_fraction, selection_fraction = fractions
    if not 0.0 < valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {valid_fraction} must be between 0 and 1 (exclusive)")
    check_selection_fraction(selection_fraction, valid_fraction)
    if folds and folds < 2:
        raise UserError(f"--folds {folds} must be at least 2 (0: no folds)")
    chosen = class_choice(classes)
    check_group_by(group_by, None if chosen is None else chosen.spec)
    if chosen is not None and mask_choice != SILENT_RULES:
        raise UserError(
            "--classes reads masks by their class values or colours; --mask-threshold, "
            "--mask-channel and --mask-rule are rules for binary masks: leave them out"
        )
    return chosen


def _place_rows(
    found: Discovery,
    keep: list[int],
    keys: list[str],
    cover: np.ndarray | None,
    names: list[str],
    options: tuple[str, float, float, int],
) -> tuple[list[str], list[str], bool]:
    """(group, split) of every kept row, and whether the layout gave the split.

    The split comes first (rarity is measured on its train rows): stratified by the
    folders, or with groups from classes by those groups with rarity over all images.
    The ``select`` rows (a selection fraction above 0) come from the train rows of the
    same strata, whether the layout gave the split or not.
    """
    group_by, valid_fraction, selection_fraction, seed = options
    folders = [found.pairs[i].group for i in keep]
    given = [found.pairs[i].split for i in keep]
    split_given = all(s is not None for s in given)
    strata = folders if cover is None else split_strata(group_by, cover, names, folders)
    if split_given:
        splits = [str(s) for s in given]
    else:
        splits = assign_splits(keys, strata, valid_fraction, seed)
    splits = draw_selection(keys, strata, splits, selection_fraction, seed)
    if cover is None:
        return folders, splits, split_given
    train = np.array(splits) == "train"
    return class_groups(group_by, cover, names, folders, train), splits, split_given


def _rejects_and_kept(
    root: Path,
    found: Discovery,
    names: list[tuple[str, str]],
    checks: list[PairCheck],
    skip_invalid: bool,
) -> tuple[list[Reject], list[int]]:
    """Every problem found, and the good pairs; raises unless ``skip_invalid``."""
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
    return rejects, keep


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
    classes: str | Path | ClassSet | ClassChoice | None = None,
    group_by: str = "folder",
    selection_fraction: float = 0.0,
) -> Scan:
    """Discover and check every pair under ``root``, split and group them; nothing is written.

    Raises:
        InvalidDataError: any problem while ``skip_invalid`` is False (the full table).
        UserError: no layout, or no valid pair at all; ``folds`` not 0 and below 2, or
            more than the train/valid pairs; a bad classes file or ``group_by``.
    """
    root = Path(root)
    chosen = _options((valid_fraction, selection_fraction), folds, mask_choice, classes, group_by)
    found = discover(root, groups_csv, allow_outside_root)
    if not allow_outside_root:
        _drop_outside(found, root)
    names = [(root_relative(p.image, root), root_relative(p.mask, root)) for p in found.pairs]
    paths = [(str(p.image), str(p.mask)) for p in found.pairs]
    checks = check_pairs(
        paths,
        names,
        max_pixels=max_pixels,
        workers=workers,
        progress=progress,
        choice=mask_choice,
        classes=chosen,
    )
    rejects, keep = _rejects_and_kept(root, found, names, checks, skip_invalid)
    keys = [names[i][0] for i in keep]
    cover = None
    if chosen is not None:
        cover = np.array([checks[i].class_fractions for i in keep], np.float64)
    class_names = [] if chosen is None else chosen.spec.names
    groups, splits, split_given = _place_rows(
        found, keep, keys, cover, class_names, (group_by, valid_fraction, selection_fraction, seed)
    )
    order = sorted(range(len(keep)), key=lambda j: (natural_key(groups[j]), natural_key(keys[j])))
    rows = [keep[j] for j in order]
    splits, groups = [splits[j] for j in order], [groups[j] for j in order]
    fold = None
    if folds:
        keys = [keys[j] for j in order]
        fold = np.array(assign_folds(keys, groups, folds, seed, splits), np.int64)
    manifest = Manifest(
        root=root,
        image=tuple(names[i][0] for i in rows),
        mask=tuple(names[i][1] for i in rows),
        group=tuple(groups),
        split=tuple(splits),
        height=np.array([checks[i].height for i in rows]),
        width=np.array([checks[i].width for i in rows]),
        coverage=np.array([checks[i].coverage for i in rows]),
        mask_rule=tuple(checks[i].mask_rule for i in rows),
        orientation=np.array([checks[i].orientation for i in rows], np.int64),
        fold=fold,
        classes=None if chosen is None else chosen.spec,
        class_coverage=None if cover is None else cover[order],
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


def _class_info(manifest: Manifest, chosen: ClassChoice, group_by: str) -> dict[str, Any]:
    """Sidecar facts of a multiclass manifest (the classes themselves write_manifest adds)."""
    info: dict[str, Any] = {"classes_file": chosen.source, "group_by": group_by}
    if group_by != "folder" and manifest.class_coverage is not None:
        train = np.array(manifest.split) == "train"
        info["class_rarity"] = rarity_table(chosen.spec, manifest.class_coverage, train)
    return info


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
    classes: str | Path | ClassSet | None = None,
    group_by: str = "folder",
    selection_fraction: float = 0.0,
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
        classes: a classes file (or ClassSet): multiclass. Every mask is checked against it
            (:mod:`segbalance.data.class_masks`), each row gets its class pixel fractions
            and the classes go into the sidecar, where train/evaluate/predict read them.
        group_by: ``folder`` (the layout's groups), ``rarest-class`` or
            ``folder+rarest-class`` (:mod:`segbalance.data.class_groups`; needs classes).
        selection_fraction: above 0, that share of each group moves from its train rows
            to a ``select`` split that picks the best epoch (:mod:`segbalance.data.splits`).

    Raises:
        InvalidDataError: problems found and ``skip_invalid`` is False; nothing is written.
    """
    root = Path(root)
    out_path = Path(out) if out is not None else root / DEFAULT_DIRNAME / "manifest.csv"
    if out_path.suffix.lower() != ".csv":
        raise UserError(f"--out {out_path} must be a .csv file")
    check_prepare_outputs(out_path)  # now, not after checking every pair
    chosen = class_choice(classes)
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
        classes=chosen,
        group_by=group_by,
        selection_fraction=selection_fraction,
    )
    rejects_path = rejects_path_for(out_path)
    if done.rejects:
        write_text(rejects_path, rejects_csv(done.rejects))
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
    if selection_fraction:  # as folds: absent, the sidecar stays as it was
        info["selection"] = f"seeded, selection_fraction={selection_fraction}"
    if folds:  # only then: the sidecar of a run without folds stays as it was
        info["folds"] = f"group-stratified, seeded, folds={folds}"
    if chosen is not None:  # so is a binary one's
        info.update(_class_info(done.manifest, chosen, group_by))
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
        group_by=group_by,
        classes_source=None if chosen is None else chosen.source,
    )
