"""Markdown tables: the one writer behind `mdist runs`, the study report, the transfer tables and the
benchmarks' rows in benchmarks/RESULTS.md (benchmarks/recording.py)."""
from __future__ import annotations

from typing import Iterable, Sequence


def markdown_row(cells: Iterable) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_header(header: Sequence[str]) -> str:
    """Header line and separator, without a trailing newline."""
    return markdown_row(header) + "\n|" + "---|" * len(header)


def markdown_table(header: Sequence[str], rows: Iterable[Iterable]) -> str:
    """Header, separator and one line per row; no trailing newline."""
    return "\n".join([markdown_header(header), *(markdown_row(row) for row in rows)])
