"""The files ``prepare`` writes: manifest, sidecar and rejects list, and which it may replace.

An existing output is replaced only when an earlier ``prepare`` wrote it
(:func:`check_prepare_outputs`), so a user's own CSV or JSON of the same name is never lost.

Example:
    >>> rejects_path_for("data/segbalance/manifest.csv")
    PosixPath('data/segbalance/manifest_rejects.csv')
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from segbalance.data.discover import Reject
from segbalance.data.manifest import COLUMNS, sidecar_path
from segbalance.io import (
    PRODUCER_PREFIX,
    check_output_path,
    check_replaceable_file,
    csv_header,
    json_object,
)

REJECT_COLUMNS = ("image", "mask", "group", "problem", "fix")


def rejects_csv(rejects: list[Reject]) -> str:
    """The rejects list's CSV text (``--skip-invalid``): one row per pair left out."""
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
