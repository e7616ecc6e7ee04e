"""Aligned text tables of the emulation layer's summaries."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    """The rows' ``columns`` as left-aligned text columns under a header line
    ("-" where a row lacks a column)."""
    widths = {c: max(len(c), *(len(row.get(c, "-")) for row in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(row.get(c, "-").ljust(widths[c]) for c in columns) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
