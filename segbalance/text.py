"""Aligned plain-text tables, the one formatter behind every table the CLI prints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

GAP = "  "


def table_lines(
    header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "lr"
) -> list[str]:
    """The lines of a table: each column as wide as its widest cell, two spaces between.

    Args:
        header: the first line's cells.
        rows: cells of the other lines, as many per row as in ``header``.
        align: ``l`` (left) or ``r`` (right) per column; the last letter holds for the
            columns after it, so ``"lr"`` is a name column followed by numbers.

    Trailing spaces are cut from every line (a left-aligned last column is not padded).

    Example:
        >>> print("\\n".join(table_lines(("group", "images"), [("a", "12"), ("bb", "3")])))
        group  images
        a          12
        bb          3
    """
    table = [list(header), *(list(r) for r in rows)]
    if not align or set(align) - {"l", "r"}:
        raise ValueError(f"align must be letters 'l' and 'r', got {align!r}")
    if any(len(r) != len(header) for r in table):
        raise ValueError(f"every row needs {len(header)} cells, like the header")
    letters = align[: len(header)].ljust(len(header), align[-1])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return [
        GAP.join(
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(r, widths, letters, strict=True)
        ).rstrip()
        for r in table
    ]


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "lr") -> str:
    """:func:`table_lines` joined into one string."""
    return "\n".join(table_lines(header, rows, align))
