"""Errors shared by every stage.

Two kinds of failure exist and the CLI maps them to exit codes:

* :class:`UserError` (exit 2): bad input the user can fix; the message names the file or
  value and says how to fix it.
* anything else (exit 1): an internal failure.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from segbalance.text import table_lines


class UserError(Exception):
    """Bad input: the message names the file or value and how to fix it (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One row of a problem table: which file, what is wrong, how to fix it."""

    file: str
    problem: str
    fix: str


class InvalidDataError(UserError):
    """Several files are wrong; carries the full table so the CLI can print it."""

    def __init__(self, problems: Sequence[Problem], summary: str = "") -> None:
        self.problems = list(problems)
        head = summary or f"{len(self.problems)} problem(s) found in the data"
        super().__init__(head + "\n" + format_problems(self.problems))


def format_problems(problems: Iterable[Problem], max_rows: int = 200) -> str:
    """Render problems as an aligned ``file | problem | fix`` table.

    Example:
        >>> print(format_problems([Problem("a.png", "empty file", "re-export it")]))
        file   problem     fix
        a.png  empty file  re-export it
    """
    problems = list(problems)
    rows = [(p.file, p.problem, p.fix) for p in problems[:max_rows]]
    lines = table_lines(("file", "problem", "fix"), rows, align="l")
    if len(problems) > max_rows:
        lines.append(f"... and {len(problems) - max_rows} more")
    return "\n".join(lines)


def unknown_name_error(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """Error for an unknown registry key, listing the valid ones and the closest match.

    Example:
        >>> str(unknown_name_error("loss", "dise", ["dice", "bce"]))
        "unknown loss 'dise'; did you mean 'dice'? Valid: bce, dice"
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "."
    return UserError(f"unknown {kind} '{name}'{hint} Valid: {', '.join(valid)}")
