"""The text the results write: one Markdown table writer and the few formatters more than one page uses."""

from __future__ import annotations

import math
from collections.abc import Sequence

MISSING = "—"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None
) -> list[str]:
    """A Markdown table as lines: ``align`` one ``l`` or ``r`` per column (default all ``l``); a ``|`` inside a
    cell is escaped so it cannot split the cell."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return [_row(header), rule, *(_row(r) for r in rows)]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def signed_pct(value: float | None, digits: int = 1) -> str:
    """A relative change (0.05 -> ``+5.0%``); ``MISSING`` for none."""
    return (
        MISSING
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:+.{digits}%}"
    )


def yes_or_bold_no(flag) -> str:
    """A target met or not: ``yes``, or a bold ``no`` that stands out in a column of yeses."""
    return "yes" if flag else "**no**"
