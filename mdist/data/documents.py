"""Streaming CC-100 documents with accounting: every input document is yielded or counted as skipped.

CC-100 files (`xx.txt` or `xx.txt.xz`) hold one document per block of lines, blocks separated by
a blank line. Lines are read one at a time, so a file of any size streams in constant memory.
- a document with an invalid UTF-8 line is skipped whole (a half document would join two texts);
- a blank line right after another blank line (or at the start of a file) is an empty document;
- the document a truncated or corrupt xz stream cuts off is skipped; those before it are kept and
  the file is listed as broken (what followed the break cannot be counted).
"""
from __future__ import annotations

import lzma
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from mdist.errors import DataError

INVALID_UTF8 = "invalid UTF-8"
EMPTY = "empty document"
TRUNCATED = "truncated xz stream"
CORRUPT = "corrupt xz stream"
EXAMPLES_PER_REASON = 10
XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass
class Document:
    text: str
    where: str  # "file:line" of its first line


@dataclass
class SkipLog:
    """Skipped documents by reason, with the first few locations of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    broken_files: dict[str, str] = field(default_factory=dict)  # file -> why it ended early

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        found = self.examples.setdefault(reason, [])
        if len(found) < EXAMPLES_PER_REASON:
            found.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": self.examples, "broken_files": self.broken_files}


def read_documents(path: Path, skips: SkipLog, progress: Callable[[int], None] = lambda nbytes: None) -> Iterator[Document]:
    """Yield the documents of one file; `progress(n)` gets the input bytes consumed since its last call."""
    with open(path, "rb") as raw:
        if path.suffix == ".xz" and raw.read(len(XZ_MAGIC)) != XZ_MAGIC:
            raise DataError(f"{path}: not an xz stream (the name ends in .xz); compress it with xz or drop the suffix")
        raw.seek(0)
        stream = lzma.open(raw) if path.suffix == ".xz" else raw
        reported = 0
        lines: list[str] = []
        first = bad = 0  # line numbers of the document's first line and of its first invalid line
        previous_blank = True
        line_no = 0
        try:
            for line_no, line in enumerate(stream, 1):
                if line_no % 4096 == 0:
                    progress(raw.tell() - reported)
                    reported = raw.tell()
                stripped = line.strip()
                if not stripped:
                    if lines or bad:
                        yield from _finish(path, first, bad, lines, skips)
                        lines, bad = [], 0
                    elif previous_blank:
                        skips.skip(EMPTY, f"{path}:{line_no}")
                    previous_blank = True
                    continue
                previous_blank = False
                if not lines and not bad:
                    first = line_no
                try:
                    lines.append(stripped.decode("utf-8"))
                except UnicodeDecodeError:
                    bad = bad or line_no
        except (EOFError, lzma.LZMAError) as err:
            reason = TRUNCATED if isinstance(err, EOFError) else CORRUPT
            skips.broken_files[str(path)] = f"{reason} after line {line_no}"
            if lines or bad:
                skips.skip(reason, f"{path}:{first}")
            lines, bad = [], 0
        progress(raw.tell() - reported)
        if lines or bad:
            yield from _finish(path, first, bad, lines, skips)


def _finish(path: Path, first: int, bad: int, lines: list[str], skips: SkipLog) -> Iterator[Document]:
    if bad:
        skips.skip(INVALID_UTF8, f"{path}:{bad}")
    else:
        yield Document("\n".join(lines), f"{path}:{first}")
