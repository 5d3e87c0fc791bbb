"""The splits of a manifest's rows: train/valid, and the optional ``select`` split.

``assign_splits`` holds each group's validation share out (``prepare --valid-fraction``).
``draw_selection`` then moves a share of each group's *train* rows to the ``select`` split
(``prepare --selection-fraction``): a second held-out set that only picks the best epoch
(``data.selection_split``), so that when the validation split drives adaptive group
weights (``--balance adaptive``), the epoch kept is not chosen on the same images. Either
draw is a pure function of the seed, the group name and the group's sorted keys, so adding
a group changes no other group's rows, and the two draws are independent of each other.

Example:
    >>> splits = assign_splits(["a", "b", "c", "d", "e"], ["0"] * 5, 0.2, seed=0)
    >>> draw_selection(["a", "b", "c", "d", "e"], ["0"] * 5, splits, 0.2, seed=0).count("select")
    1
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from segbalance.data.manifest import natural_key
from segbalance.errors import UserError

SELECT = "select"  # the split name of the selection rows
_SELECT_STREAM = 1  # keeps the selection draw independent of the validation draw


def _by_group(groups: Sequence[str], rows: Sequence[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i in rows:
        out.setdefault(groups[i], []).append(i)
    return out


def _draw(keys: Sequence[str], rows: list[int], count: int, seed: list[int]) -> list[int]:
    """``count`` of ``rows``, drawn by ``seed`` from the rows in natural key order."""
    ordered = sorted(rows, key=lambda i: natural_key(keys[i]))
    rng = np.random.default_rng(seed)
    return [ordered[pos] for pos in rng.permutation(len(rows))[:count]]


def assign_splits(
    keys: Sequence[str], groups: Sequence[str], valid_fraction: float, seed: int
) -> list[str]:
    """Split rows train/valid, stratified by group, reproducibly from ``seed``.

    Each group with n >= 2 rows gets ``round(n * valid_fraction)`` valid rows, at least 1
    and at most n - 1; a single-row group stays in train.

    Args:
        keys: a stable identity per row (e.g. the image path).
        groups: the group of each row.
        valid_fraction: in (0, 1).
        seed: the run seed.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {valid_fraction} must be between 0 and 1 (exclusive)")
    out = ["train"] * len(keys)
    for g, rows in _by_group(groups, range(len(keys))).items():
        n = len(rows)
        if n < 2:
            continue
        n_valid = min(max(round(n * valid_fraction), 1), n - 1)
        for i in _draw(keys, rows, n_valid, [seed, zlib.crc32(g.encode("utf-8"))]):
            out[i] = "valid"
    return out


def check_selection_fraction(fraction: float, valid_fraction: float | None) -> None:
    """Refuse a selection share outside [0, 1) or one that leaves nothing to train on.

    ``valid_fraction`` is None when the layout gives the split (no share to add up).
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(
            f"--selection-fraction {fraction} must be at least 0 and below 1 (0: no select split)"
        )
    if valid_fraction is not None and fraction + valid_fraction >= 1.0:
        raise UserError(
            f"--selection-fraction {fraction} and --valid-fraction {valid_fraction} add up to "
            f"{fraction + valid_fraction:g}: nothing would be left to train on; lower one of them"
        )


def draw_selection(
    keys: Sequence[str],
    groups: Sequence[str],
    splits: Sequence[str],
    fraction: float,
    seed: int,
) -> list[str]:
    """``splits`` with a share of each group's train rows moved to the ``select`` split.

    A group of n rows (all splits) gives ``round(n * fraction)`` of its train rows, at
    least 1, while at least one train row stays; a group with fewer than 2 train rows
    gives none. ``fraction`` 0 returns the splits unchanged.

    Args:
        keys: a stable identity per row (the image path).
        groups: the stratum of each row (the group, or the split strata of class groups).
        splits: each row's split so far.
        fraction: in [0, 1).
        seed: the prepare seed.
    """
    check_selection_fraction(fraction, None)
    out = list(splits)
    if fraction == 0.0:
        return out
    sizes = _by_group(groups, range(len(keys)))
    train = [i for i, s in enumerate(splits) if s == "train"]
    for g, rows in _by_group(groups, train).items():
        if len(rows) < 2:
            continue
        count = min(max(round(len(sizes[g]) * fraction), 1), len(rows) - 1)
        for i in _draw(keys, rows, count, [seed, zlib.crc32(g.encode("utf-8")), _SELECT_STREAM]):
            out[i] = SELECT
    return out
