"""What a run trains on, summarised so that ``--resume`` can tell the same data from other data.

A resume continues the plan at the checkpointed epoch and step; that is only the same run
when the rows are the same. Re-preparing the data (other rows, another split, other image
sizes, a changed ``mask_rule``) changes the plan silently, so the run records a fingerprint
of its train and valid rows when it starts and a resume compares it, saying what changed.
A multiclass manifest's classes are part of it (binary fingerprints are as they were).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from segbalance.data.manifest import Manifest
from segbalance.errors import UserError
from segbalance.io import write_text
from segbalance.train.workdir import DATA


def _digest(rows: Manifest) -> str:
    h = hashlib.sha256()
    for values in zip(
        rows.image,
        rows.mask,
        rows.group,
        rows.split,
        rows.height,
        rows.width,
        rows.mask_rule,
        strict=True,
    ):
        h.update(json.dumps([str(v) for v in values]).encode())
    return h.hexdigest()


def data_fingerprint(
    train: Manifest, valid: Manifest, select: Manifest | None = None
) -> dict[str, Any]:
    """Row counts per split and group, a digest of every row (paths, group, split, size),
    the classes of a multiclass manifest, and the rows that pick the best epoch (only
    where a selection split does: other runs' fingerprints are as they were)."""
    parts = {"train": train, "valid": valid, **({} if select is None else {"select": select})}
    out: dict[str, Any] = {
        name: {"rows": len(rows), "groups": rows.counts(), "sha256": _digest(rows)}
        for name, rows in parts.items()
    }
    if train.classes is not None:
        out["classes"] = train.classes.to_json()
    return out


def write_fingerprint(work_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Record the fingerprint of a new run."""
    write_text(Path(work_dir) / DATA, json.dumps(fingerprint, indent=2) + "\n")


def read_fingerprint(work_dir: Path) -> dict[str, Any] | None:
    """The recorded fingerprint; None for a run made before fingerprints (or a damaged file)."""
    try:
        value = json.loads((Path(work_dir) / DATA).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _class_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    def names(raw: dict[str, Any] | None) -> str:
        if raw is None:
            return "none (binary)"
        return ", ".join(str(c.get("name")) for c in raw.get("classes", []))

    if names(old) == names(new):
        return f"classes {names(new)}: other values, colours or ignore"
    return f"classes: {names(old)} -> {names(new)}"


def data_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one line per change ([] when the same)."""
    out: list[str] = []
    if old.get("classes") != new.get("classes"):
        out.append(_class_change(old.get("classes"), new.get("classes")))
    if ("select" in old) != ("select" in new):
        had = "a" if "select" in old else "no"
        out.append(f"the run started with {had} selection split (data.selection_split)")
    for split in ("train", "valid", *(["select"] if "select" in old and "select" in new else [])):
        a, b = old.get(split, {}), new[split]
        if a.get("sha256") == b["sha256"]:
            continue
        if a.get("rows") != b["rows"]:
            out.append(f"{split} rows: {a.get('rows')} -> {b['rows']}")
        groups_a, groups_b = a.get("groups", {}), b["groups"]
        for g in sorted(set(groups_a) | set(groups_b)):
            if groups_a.get(g, 0) != groups_b.get(g, 0):
                out.append(f"{split} group {g}: {groups_a.get(g, 0)} -> {groups_b.get(g, 0)} rows")
        if len(out) == 0 or not out[-1].startswith(split):
            out.append(f"{split} rows: same counts, other files, sizes or mask rules")
    return out


def check_same_data(work_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse a resume whose rows differ from those the run started with.

    Raises:
        UserError: listing what changed.
    """
    recorded = read_fingerprint(work_dir)
    changes = [] if recorded is None else data_changes(recorded, fingerprint)
    if changes:
        raise UserError(
            f"--resume must train on the data the run in {work_dir} started with, but the "
            "manifest changed:\n  " + "\n  ".join(changes) + "\nUse the manifest it started "
            "with, or start a new run (another --work-dir, or --overwrite)"
        )
