"""Group-stratified cross-validation folds: assign them (``prepare --folds K``), use them.

Every group is spread over the K folds as evenly as its size allows (fold sizes within a
group differ by at most one) and the groups' leftovers rotate over the folds, so the
folds' total sizes differ by at most one too (largest-remainder spreading). The draw is a
pure function of the seed, the group name and the group's sorted keys. Rows of the test
split stay out of the folds (fold -1): cross-validation never touches the test set; nor
do the ``select`` rows, which pick the best epoch of every fold.

``train --fold k`` (``data.fold``) validates on fold k and trains on the other folds.

Example:
    >>> assign_folds(["a", "b", "c", "d"], ["0", "0", "0", "1"], 2, seed=0)
    [0, 0, 1, 1]
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from segbalance.data.manifest import NO_FOLD, Manifest, natural_key, natural_sort
from segbalance.data.splits import SELECT
from segbalance.errors import UserError

# Rows of these splits are in no fold: the test set, and the selection rows that pick the
# best epoch of every fold (prepare --selection-fraction).
OUTSIDE_FOLDS = ("test", SELECT)
FIX = "run 'segbalance prepare DATA_ROOT --folds K' to record folds in the manifest"


def check_fold_count(folds: int, rows: int) -> None:
    """Refuse a fold count that leaves a fold empty (or is not a split at all)."""
    if folds < 2:
        raise UserError(
            f"--folds {folds} must be at least 2 (K folds: train on K-1, validate on 1)"
        )
    if folds > rows:
        raise UserError(
            f"--folds {folds} is more than the {rows} train/valid images: some fold would be "
            "empty; choose fewer folds"
        )


def assign_folds(
    keys: Sequence[str],
    groups: Sequence[str],
    folds: int,
    seed: int,
    splits: Sequence[str] | None = None,
) -> list[int]:
    """A fold id per row, stratified by group, reproducibly from ``seed``.

    Args:
        keys: a stable identity per row (the image path).
        groups: the group of each row.
        folds: K >= 2.
        seed: fixes the draw.
        splits: each row's split; ``test`` and ``select`` rows get -1 (outside the folds).

    Raises:
        UserError: K < 2 or more folds than rows to fold.
    """
    folded = [i for i in range(len(keys)) if splits is None or splits[i] not in OUTSIDE_FOLDS]
    check_fold_count(folds, len(folded))
    by_group: dict[str, list[int]] = {}
    for i in folded:
        by_group.setdefault(groups[i], []).append(i)
    out = [NO_FOLD] * len(keys)
    cursor = 0  # where the next group's leftover rows start: totals stay even
    for g in natural_sort(by_group):
        rows = sorted(by_group[g], key=lambda i: natural_key(keys[i]))
        rng = np.random.default_rng([seed, zlib.crc32(g.encode("utf-8")), folds])
        for pos, row in enumerate(rng.permutation(len(rows))):
            out[rows[row]] = (cursor + pos) % folds
        cursor = (cursor + len(rows)) % folds
    return out


def fold_count(manifest: Manifest) -> int:
    """K of a folded manifest (0 when it has no folds)."""
    if manifest.fold is None or not (manifest.fold >= 0).any():
        return 0
    return int(manifest.fold.max()) + 1


def check_fold(manifest: Manifest, fold: int, where: str) -> int:
    """Refuse a fold the manifest does not have; returns K.

    Raises:
        UserError: the manifest has no folds, or ``fold`` is outside 0..K-1.
    """
    k = fold_count(manifest)
    if k == 0:
        raise UserError(f"--fold {fold}: {where} has no folds; {FIX}")
    if not 0 <= fold < k:
        raise UserError(f"--fold {fold} is outside 0..{k - 1}: {where} has {k} folds")
    return k


def fold_rows(manifest: Manifest, fold: int, where: str) -> tuple[Manifest, Manifest]:
    """(train, valid) of fold ``fold``: the other folds' rows, and that fold's rows."""
    check_fold(manifest, fold, where)
    assert manifest.fold is not None  # checked above
    ids = manifest.fold
    train = np.flatnonzero((ids >= 0) & (ids != fold))
    valid = np.flatnonzero(ids == fold)
    return manifest.take(train), manifest.take(valid)


def fold_table(manifest: Manifest) -> list[tuple[str, ...]]:
    """Rows per group and fold (``group, fold 0, ..., fold K-1``), for prepare's summary."""
    k = fold_count(manifest)
    folds = np.full(len(manifest), NO_FOLD) if manifest.fold is None else manifest.fold
    groups = np.asarray(manifest.group)
    return [
        (g, *(str(int(np.sum((groups == g) & (folds == f)))) for f in range(k)))
        for g in manifest.groups
    ]
