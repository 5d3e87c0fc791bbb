"""The manifest's sidecar JSON: where it lies, the data root it records, what it allows.

``prepare`` writes ``<name>.json`` beside ``<name>.csv`` (:func:`sidecar_path`). It holds the
data root relative to the CSV's folder, ``allow_outside_root`` when ``prepare
--allow-outside-root`` accepted files elsewhere, and ``classes`` for a multiclass manifest.
:mod:`segbalance.data.manifest` reads it through these helpers.

Example:
    >>> sidecar_path("data/segbalance/manifest.csv")
    PosixPath('data/segbalance/manifest.json')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segbalance.classes import ClassSet, classes_from_json
from segbalance.data.manifest_csv import class_columns
from segbalance.errors import UserError

#: The folder ``prepare`` writes its manifest into by default (``ROOT/segbalance``).
DEFAULT_DIRNAME = "segbalance"


def sidecar_path(path: str | Path) -> Path:
    """The JSON written next to a manifest CSV (``manifest.csv`` -> ``manifest.json``)."""
    return Path(path).with_suffix(".json")


def resolve_root(path: Path, root: str | Path | None) -> Path:
    """The data root of manifest ``path``: ``root``, else the sidecar's, else from its place.

    Without a sidecar: the CSV's folder's parent when that folder is called
    :data:`DEFAULT_DIRNAME`, else the CSV's folder.

    Raises:
        UserError: the sidecar exists but is unreadable.
    """
    if root is not None:
        return Path(root)
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            return path.absolute().parent / meta["root"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(
                f"manifest sidecar {side} is unreadable ({err}); delete it and pass --root, "
                "or run 'segbalance prepare' again"
            ) from err
    folder = path.absolute().parent
    return folder.parent if folder.name == DEFAULT_DIRNAME else folder


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's JSON object; empty when absent or unreadable (resolve_root reports)."""
    try:
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def allows_outside(path: Path) -> bool:
    """Whether the sidecar records ``prepare --allow-outside-root`` (no sidecar: no)."""
    return read_sidecar(path).get("allow_outside_root") is True


def sidecar_classes(path: Path, fieldnames: Sequence[str]) -> tuple[ClassSet | None, list[str]]:
    """The sidecar's classes and their coverage columns (None, [] for a binary manifest).

    Raises:
        UserError: invalid classes, or the CSV lacks a ``coverage_<name>`` column.
    """
    raw = read_sidecar(path).get("classes")
    if raw is None:
        return None, []
    spec = classes_from_json(raw, f"{sidecar_path(path)} 'classes'")
    columns = class_columns(spec.names)
    missing = [c for c in columns if c not in fieldnames]
    if missing:
        raise UserError(
            f"manifest {path} lacks column(s) {', '.join(missing)} that its classes need; "
            "run 'segbalance prepare --classes' again"
        )
    return spec, columns
