"""The manifest: one CSV row per image/mask pair, the contract between ``prepare`` and the rest.

Columns, in order: ``image, mask, group, split, height, width, coverage, mask_rule``, then
``fold`` when the manifest has cross-validation folds (:mod:`segbalance.data.manifest_csv`).
``image``/``mask`` are POSIX paths relative to the data root. The root is found from an
explicit argument, else the sidecar ``<name>.json`` written next to the CSV, else the CSV's
folder's parent when that folder is called ``segbalance`` (the default output place), else
the CSV's folder.

A manifest is input too: every row's paths must be relative and stay inside the root, also
through symlinks (:mod:`segbalance.data.paths`), unless its sidecar records
``allow_outside_root`` (``prepare --allow-outside-root``). So an edited manifest cannot make
a command open files elsewhere.

Example:
    >>> m = read_manifest("data/segbalance/manifest.csv")
    >>> m.groups, m.select(split="valid").group_ids[:3]
    (['0', '1', '2', '3', '4'], array([0, 0, 0], dtype=int32))
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segbalance.classes import ClassSet
from segbalance.data.manifest_csv import (
    COLUMNS,
    FOLD_COLUMN,
    NO_FOLD,
    ORIENTATION_COLUMN,
    SPLITS,
    class_columns,
    format_float,
    parse_class_coverage,
    parse_orientation,
    parse_row,
    separator_hint,
)
from segbalance.data.paths import outside_root_problems
from segbalance.data.sidecar import (
    DEFAULT_DIRNAME,
    allows_outside,
    resolve_root,
    sidecar_classes,
    sidecar_path,
)
from segbalance.errors import InvalidDataError, Problem, UserError
from segbalance.io import atomic_write
from segbalance.version import __version__

# The columns are manifest_csv's, re-exported: this is where readers look.
__all__ = ["COLUMNS", "DEFAULT_DIRNAME", "FOLD_COLUMN", "NO_FOLD", "SPLITS", "Manifest"]
__all__ += ["manifest_csv_text", "natural_key", "natural_sort", "read_manifest"]
__all__ += ["sidecar_path", "write_manifest"]

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: ``"2" < "10"``, ``"img2" < "img10"``."""
    parts = _DIGITS.split(text)
    key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p)
    return (*key, text)  # the raw text breaks ties such as "01" vs "1"


def natural_sort(items: Iterable[str]) -> list[str]:
    """Strings in natural order.

    Example:
        >>> natural_sort(["10", "2", "b", "1"])
        ['1', '2', '10', 'b']
    """
    return sorted(items, key=natural_key)


def _frozen_array(values: Any, dtype: Any) -> np.ndarray:
    arr = np.array(values, dtype=dtype).reshape(-1)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Manifest:
    """Image/mask pairs with their group, split and facts found while checking them.

    Attributes:
        root: data root; ``image``/``mask`` are relative to it.
        image, mask, group, split, mask_rule: one string per row.
        height, width: pixel size per row (int64). coverage: foreground fraction (float64).
        group_order: every group name in id order. Empty means the natural sort of the
            groups present; a selection keeps its parent's order so group ids stay stable.
        fold: cross-validation fold per row (int64, -1 outside the folds), or None when
            the manifest has no folds (``prepare --folds K``).
        orientation: each image's EXIF orientation (int64, 1-8; empty: all 1, stored as
            shown); the decoder turns the pixels by it.
        classes: the classes of a multiclass manifest (``prepare --classes``, kept in the
            sidecar), None for binary.
        class_coverage: float64 [N, K], each row's share of pixels in each class (the
            ``coverage_<name>`` columns); None for binary.
    """

    root: Path
    image: tuple[str, ...]
    mask: tuple[str, ...]
    group: tuple[str, ...]
    split: tuple[str, ...]
    height: np.ndarray
    width: np.ndarray
    coverage: np.ndarray
    mask_rule: tuple[str, ...]
    group_order: tuple[str, ...] = field(default=())
    fold: np.ndarray | None = None
    orientation: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    classes: ClassSet | None = None
    class_coverage: np.ndarray | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "root", Path(os.path.abspath(self.root)))  # normalises ".."
        for name in ("image", "mask", "group", "split", "mask_rule"):
            put(self, name, tuple(str(v) for v in getattr(self, name)))
        put(self, "height", _frozen_array(self.height, np.int64))
        put(self, "width", _frozen_array(self.width, np.int64))
        put(self, "coverage", _frozen_array(self.coverage, np.float64))
        n = len(self.image)
        lengths = {c: len(getattr(self, c)) for c in COLUMNS}
        if self.fold is not None:
            put(self, "fold", _frozen_array(self.fold, np.int64))
            lengths[FOLD_COLUMN] = len(self.fold)
        # Not given (a manifest without the column): every image is stored as shown.
        turns = self.orientation if len(self.orientation) else np.ones(n, np.int64)
        put(self, "orientation", _frozen_array(turns, np.int64))
        lengths[ORIENTATION_COLUMN] = len(self.orientation)
        if self.class_coverage is not None:
            k = 0 if self.classes is None else self.classes.num_classes
            cover = np.array(self.class_coverage, np.float64).reshape(n, k)
            cover.setflags(write=False)
            put(self, "class_coverage", cover)
        if any(v != n for v in lengths.values()):
            raise ValueError(f"manifest columns differ in length: {lengths}")
        order = tuple(self.group_order) or tuple(natural_sort(set(self.group)))
        missing = set(self.group) - set(order)
        if missing:
            raise ValueError(f"groups {sorted(missing)} are not in group_order {order}")
        put(self, "group_order", order)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def groups(self) -> list[str]:
        """Group names in id order (natural sort of the full manifest)."""
        return list(self.group_order)

    @property
    def group_ids(self) -> np.ndarray:
        """int32 index into :attr:`groups`, one per row."""
        index = {g: i for i, g in enumerate(self.group_order)}
        return np.array([index[g] for g in self.group], dtype=np.int32)

    def counts(self) -> dict[str, int]:
        """Rows per group, every group of :attr:`groups` included (0 when absent)."""
        out = dict.fromkeys(self.group_order, 0)
        for g in self.group:
            out[g] += 1
        return out

    def take(self, rows: Sequence[int] | np.ndarray) -> Manifest:
        """The given rows (in that order), keeping root and group order."""
        idx = [int(i) for i in rows]
        return Manifest(
            root=self.root,
            image=tuple(self.image[i] for i in idx),
            mask=tuple(self.mask[i] for i in idx),
            group=tuple(self.group[i] for i in idx),
            split=tuple(self.split[i] for i in idx),
            height=self.height[idx],
            width=self.width[idx],
            coverage=self.coverage[idx],
            mask_rule=tuple(self.mask_rule[i] for i in idx),
            group_order=self.group_order,
            fold=None if self.fold is None else self.fold[idx],
            orientation=self.orientation[idx],
            classes=self.classes,
            class_coverage=None if self.class_coverage is None else self.class_coverage[idx],
        )

    def select(
        self, split: str | Sequence[str] | None = None, groups: Sequence[str] | None = None
    ) -> Manifest:
        """Rows of one split (or several) and/or some groups; ``.groups`` stays the parent's.

        Raises:
            UserError: a requested group is not in the manifest.
        """
        splits = {split} if isinstance(split, str) else (set(split) if split else None)
        wanted = None
        if groups is not None:
            wanted = {str(g) for g in groups}
            unknown = wanted - set(self.group_order)
            if unknown:
                raise UserError(
                    f"group(s) {', '.join(natural_sort(unknown))} not in the manifest; "
                    f"its groups are {', '.join(self.group_order)}"
                )
        rows = [
            i
            for i in range(len(self))
            if (splits is None or self.split[i] in splits)
            and (wanted is None or self.group[i] in wanted)
        ]
        return self.take(rows)

    def image_paths(self) -> list[str]:
        """Absolute image paths, one per row."""
        return [str(self.root / p) for p in self.image]

    def mask_paths(self) -> list[str]:
        """Absolute mask paths, one per row."""
        return [str(self.root / p) for p in self.mask]


def manifest_csv_text(manifest: Manifest) -> str:
    """The CSV text of a manifest (header plus one line per row)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    folds = manifest.fold
    turned = bool((manifest.orientation != 1).any())
    # Optional columns only when used: other manifests stay byte-identical.
    extra = ([FOLD_COLUMN] if folds is not None else []) + ([ORIENTATION_COLUMN] if turned else [])
    cover = manifest.class_coverage
    if manifest.classes is not None and cover is not None:
        extra += class_columns(manifest.classes.names)
    writer.writerow((*COLUMNS, *extra))
    for i in range(len(manifest)):
        fold: list[int | str] = [] if folds is None else [int(folds[i])]
        fold += [int(manifest.orientation[i])] if turned else []
        fold += [] if cover is None else [format_float(v) for v in cover[i]]
        writer.writerow(
            [
                manifest.image[i],
                manifest.mask[i],
                manifest.group[i],
                manifest.split[i],
                int(manifest.height[i]),
                int(manifest.width[i]),
                format_float(manifest.coverage[i]),
                manifest.mask_rule[i],
                *fold,
            ]
        )
    return buf.getvalue()


def write_manifest(
    manifest: Manifest, path: str | Path, info: Mapping[str, Any] | None = None
) -> Path:
    """Write the CSV and its sidecar JSON atomically (temp files, then renames).

    The sidecar holds the data root relative to the CSV's folder so the manifest can be
    read from anywhere, plus ``info`` (layout found, mask rules seen, ...).

    Args:
        manifest: what to write.
        path: the CSV file; its folder is created.
        info: extra JSON-able facts for the sidecar.
    """
    path = Path(path)
    side = sidecar_path(path)
    meta: dict[str, Any] = dict(info or {})
    folder = path.absolute().parent
    try:
        meta["root"] = Path(os.path.relpath(manifest.root, folder)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        meta["root"] = manifest.root.as_posix()
    meta["groups"] = manifest.groups
    if manifest.classes is not None:
        meta["classes"] = manifest.classes.to_json()
    meta["rows"] = len(manifest)
    meta["tool"] = f"segbalance {__version__}"
    # The inner file is renamed first: the sidecar is in place before a reader sees the CSV,
    # and a failure before that leaves both old files as they were.
    with (
        atomic_write(path, encoding="utf-8") as csv_file,
        atomic_write(side, encoding="utf-8") as json_file,
    ):
        csv_file.write(manifest_csv_text(manifest))
        json_file.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(
    path: str | Path, root: str | Path | None = None, check_files: bool = True
) -> Manifest:
    """Read a manifest CSV written by ``segbalance prepare``.

    Args:
        path: the CSV.
        root: data root; default from the sidecar JSON or the CSV's place (module doc).
        check_files: also check that every image and mask file exists.

    Raises:
        UserError: unreadable file or missing columns; InvalidDataError with one problem
            per bad row (``file:line``) or missing file.
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "segbalance" / "manifest.csv"
        hint = f"its manifest is {inside}" if inside.is_file() else "prepare writes one"
        raise UserError(
            f"manifest {path} is a folder; give the manifest CSV ({hint}: "
            f"'segbalance prepare {path}')"
        )
    if not path.is_file():
        raise UserError(f"manifest {path} does not exist; create it with 'segbalance prepare'")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read manifest {path}: {err}") from err
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(
            f"manifest {path} lacks column(s) {', '.join(missing)}"
            f"{separator_hint(list(reader.fieldnames or []))}; expected "
            f"{', '.join(COLUMNS)}. Write it with 'segbalance prepare'"
        )
    folded = FOLD_COLUMN in (reader.fieldnames or [])
    spec, class_cols = sidecar_classes(path, list(reader.fieldnames or []))
    cover: list[list[float]] = []
    base = resolve_root(path, root)
    real_base = None if allows_outside(path) else base.resolve()
    problems: list[Problem] = []
    rows = []
    turns = []
    first_line: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        where = f"{path}:{line}"
        parsed = parse_row(row, where, problems, folded)
        if parsed is None:
            continue
        if real_base is not None:  # checked before any file is opened
            outside = outside_root_problems(where, parsed[:2], base, real_base)
            if outside:
                problems += outside
                continue
        key = posixpath.normpath(parsed[0])  # ./a.png and a.png are one file
        if key in first_line:  # a repeated row would silently count twice in training
            problems.append(
                Problem(
                    where,
                    f"image {parsed[0]} already listed on line {first_line[key]}",
                    "remove the repeated row",
                )
            )
            continue
        first_line[key] = line
        rows.append(parsed)
        turns.append(
            parse_orientation((row.get(ORIENTATION_COLUMN) or "").strip(), where, problems)
        )
        cover.append(parse_class_coverage(row, class_cols, where, problems, spec is not None))
        if check_files:
            for col, rel in zip(("image", "mask"), parsed[:2], strict=True):
                if not (base / rel).is_file():
                    problems.append(
                        Problem(
                            f"{where} {base / rel}",
                            f"{col} file does not exist",
                            "check the data root (--root) or run 'segbalance prepare' again",
                        )
                    )
    if problems:
        raise InvalidDataError(problems, f"manifest {path} has {len(problems)} problem(s)")
    if not rows:
        raise UserError(f"manifest {path} has no rows; run 'segbalance prepare' on your data")
    cols = list(zip(*rows, strict=True))
    fold = np.array(cols.pop(), np.int64) if folded else None
    orientation = np.array(turns, np.int64)
    coverage = None if spec is None else np.array(cover, np.float64)
    return Manifest(  # type: ignore[misc]
        base,
        *cols,  # type: ignore[arg-type]
        fold=fold,
        orientation=orientation,
        classes=spec,
        class_coverage=coverage,
    )
