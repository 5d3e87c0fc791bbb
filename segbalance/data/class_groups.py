"""Groups drawn from classes: each image's rarest foreground class (``prepare --group-by``).

``--group-by rarest-class`` puts every image in the group of the rarest foreground class
it contains; ``folder+rarest-class`` joins the folder group and that class (``3/skin``).
The exact per-group quotas of the sampler then lift rare classes: MMSegmentation's
``ClassBalancedDataset`` with exact per-epoch quotas instead of ``ceil(repeat factor)`` copies.

Rules:

* An image *contains* a class when at least one of its counted pixels is of that class
  (``coverage_<name>`` > 0).
* Rarity of a class = share of the **train** images that contain it; the rarest class an
  image contains is the one of lowest share, ties broken by the lower share of train
  pixels, then by the class listed **later** in the classes file (files tend to list the
  common classes first). A class in no train image has share 0: the rarest of all.
* An image with no foreground class is in group :data:`NO_CLASS_GROUP` (``none``).
* The split comes first, since rarity is measured on it: when the layout gives no split,
  rows are split stratified by the same kind of group computed with rarity over all images
  (:func:`split_strata`), so every rare class gets valid images too; then the groups are
  computed with rarity on the train split. A layout's own split is kept as it is.

Example:
    >>> presence = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], bool)  # background, nail, skin
    >>> rarity = class_rarity(presence.astype(float), np.ones(3, bool))
    >>> rarest_class_groups(presence.astype(float), ["background", "nail", "skin"], rarity)
    ['nail', 'skin', 'none']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segbalance.classes import ClassSet
from segbalance.errors import UserError

#: What ``prepare --group-by`` accepts; ``folder`` (the layout's groups) is the default.
GROUP_BY = ("folder", "rarest-class", "folder+rarest-class")
#: The group of images with no foreground class.
NO_CLASS_GROUP = "none"


def check_group_by(group_by: str, spec: ClassSet | None) -> None:
    """Refuse an unknown ``--group-by``, a class one without classes, or a clashing name.

    Raises:
        UserError: naming the choice and the fix.
    """
    if group_by not in GROUP_BY:
        raise UserError(f"--group-by {group_by}: choose one of {', '.join(GROUP_BY)}")
    if group_by == "folder":
        return
    if spec is None:
        raise UserError(
            f"--group-by {group_by} groups images by their classes: pass --classes FILE "
            "(a classes file naming them; see 'segbalance prepare --help')"
        )
    if NO_CLASS_GROUP in spec.foreground:
        raise UserError(
            f"class '{NO_CLASS_GROUP}' would share its group name with the images that have "
            f"no foreground class (--group-by {group_by}); rename the class"
        )


def class_rarity(fractions: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float64 [K, 2]: per class, the share of ``rows`` images containing it, and its mean
    pixel share there (the tie-break). All zero when ``rows`` selects nothing.

    Args:
        fractions: [N, K] per-image class pixel fractions.
        rows: bool [N], the images rarity is measured on (the train split).
    """
    picked = np.asarray(fractions, np.float64)[np.asarray(rows, bool)]
    if len(picked) == 0:
        return np.zeros((np.shape(fractions)[1], 2))
    return np.stack([(picked > 0).mean(axis=0), picked.mean(axis=0)], axis=1)


def rarest_class(fractions: np.ndarray, rarity: np.ndarray) -> int | None:
    """The index of the rarest foreground class present in one image (None: none present)."""
    present = [k for k in range(1, len(fractions)) if fractions[k] > 0]
    if not present:
        return None
    return min(present, key=lambda k: (rarity[k, 0], rarity[k, 1], -k))


def rarest_class_groups(
    fractions: np.ndarray,
    names: Sequence[str],
    rarity: np.ndarray,
    folders: Sequence[str] | None = None,
) -> list[str]:
    """Each image's group: its rarest foreground class, or ``none``; ``folder/class`` with
    ``folders`` (``folder+rarest-class``)."""
    out = []
    for i, row in enumerate(np.asarray(fractions, np.float64)):
        k = rarest_class(row, rarity)
        name = NO_CLASS_GROUP if k is None else names[k]
        out.append(name if folders is None else f"{folders[i]}/{name}")
    return out


def class_groups(
    group_by: str,
    fractions: np.ndarray,
    names: Sequence[str],
    folders: Sequence[str],
    rows: np.ndarray,
) -> list[str]:
    """The groups ``--group-by`` asks for, rarity measured on ``rows`` (bool [N])."""
    if group_by == "folder":
        return list(folders)
    rarity = class_rarity(fractions, rows)
    joined = folders if group_by == "folder+rarest-class" else None
    return rarest_class_groups(fractions, names, rarity, joined)


def split_strata(
    group_by: str, fractions: np.ndarray, names: Sequence[str], folders: Sequence[str]
) -> list[str]:
    """What to stratify the train/valid split by: the groups with rarity over all images."""
    return class_groups(group_by, fractions, names, folders, np.ones(len(folders), bool))


def rarity_table(spec: ClassSet, fractions: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """``{class: share of the rows' images containing it}`` of the foreground classes."""
    rarity = class_rarity(fractions, rows)
    return {n: float(rarity[k, 0]) for k, n in enumerate(spec.names) if k > 0}
