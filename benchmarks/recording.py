"""What every benchmark records beside its figures: commit, UTC time, device, and one table per run.

Each run appends one self-contained markdown table (its own title and header) to
benchmarks/RESULTS.md, so tables of different benchmarks and runs never interleave. Call
`git_commit()` and `utc_stamp()` once per run: other work may commit while the rows run.
"""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Iterable, Sequence

import torch

from mdist.markdown import markdown_header, markdown_row, markdown_table  # the tables of mdist's own outputs
from mdist.tracking.facts import source_commit as git_commit  # one implementation for runs and benchmarks

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def device_name(device: str = "cuda") -> str:
    """The GPU's name for "cuda" (when one is present), else the CPU: architecture and core count."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def append_table(title: str, header: Sequence[str], rows: Iterable[Iterable], path: Path = RESULTS) -> Path:
    """Append `### title` and a markdown table of `rows` (cells in `header` order) to `path`."""
    with path.open("a", encoding="utf-8") as f:
        f.write(f"\n### {title}\n\n{markdown_table(header, rows)}\n")
    return path
