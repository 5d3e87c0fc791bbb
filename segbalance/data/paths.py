"""Path rules: which paths listed relative to the data root may be opened, and why not.

A manifest (or a tutorial CSV) names files relative to the data root. Refused, unless the
user allows files outside the root: absolute paths (``/x``, ``C:\\x``, ``C:x``), paths that
climb out of the root once normalised (``../x``, ``a/../../x``), and paths inside the root
whose real file (symlinks followed) lies outside it. Backslashes count as separators (a CSV
written on Windows).

Example:
    >>> path_problem("../../etc/passwd", Path("data"))
    "path '../../etc/passwd' climbs out of the data root"
    >>> has_drive("C:\\\\data\\\\a.png"), has_drive("/data/a.png")
    (True, False)
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

from segbalance.errors import Problem

_DRIVE = re.compile(r"^[A-Za-z]:")  # C:\x, C:/x, C:x


def has_drive(text: str) -> bool:
    """Whether ``text`` starts with a Windows drive (``C:``): absolute on Windows."""
    return bool(_DRIVE.match(text))


def path_problem(value: str, root: Path, real_root: Path | None = None) -> str | None:
    """Why a path listed relative to ``root`` may not be opened, or None when it may.

    Backslashes count as separators here (a CSV written on Windows); refused are absolute
    paths, paths that climb out of the root once normalised, and paths inside the root
    whose real file (symlinks followed) lies outside ``real_root`` (default: root resolved).

    Example:
        >>> path_problem("../../etc/passwd", Path("data"))
        "path '../../etc/passwd' climbs out of the data root"
    """
    text = value.strip().replace("\\", "/")
    if text.startswith("/") or has_drive(text):
        return f"path '{value}' is absolute"
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../"):
        return f"path '{value}' climbs out of the data root"
    real_root = real_root or root.resolve()
    real = (root / value).resolve()
    if real != real_root and not real.is_relative_to(real_root):
        return f"path '{value}' leads outside the data root through a symlink (to {real})"
    return None


def outside_root_problems(
    where: str, paths: Sequence[str], root: Path, real_root: Path
) -> list[Problem]:
    """One problem per image/mask path of a manifest row that points outside the data root."""
    out = []
    for col, value in zip(("image", "mask"), paths, strict=True):
        reason = path_problem(value, root, real_root)
        if reason:
            out.append(
                Problem(
                    where,
                    f"{col} {reason}",
                    f"paths must stay inside the data root {os.path.abspath(root)}; run "
                    "'segbalance prepare' again (with --allow-outside-root to keep files "
                    "outside it)",
                )
            )
    return out


def root_relative(path: Path, root: Path) -> str:
    """POSIX path relative to the root; absolute when it lies outside (allowed only then)."""
    rel = os.path.relpath(path, root)
    if rel.split(os.sep)[0] == "..":
        return Path(os.path.abspath(path)).as_posix()
    return Path(rel).as_posix()
