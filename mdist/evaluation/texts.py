"""Reading evaluation text: line-aligned parallel files, and plain text files or webdataset shards.

Every problem is a `DataError` naming the file (and the line where there is one), so a bad input
ends a command with one clear message instead of a traceback or a silently wrong score.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from mdist.errors import DataError, require_file

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _read_text(path: Path) -> str:
    require_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None


def read_lines(path: Path) -> list[str]:
    """One sentence per line; a blank line is an error because it would shift the alignment silently."""
    lines = _read_text(path).splitlines()
    if not lines:
        raise DataError(f"{path}: file is empty")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty line (line i must translate line i of the other file)")
    return [line.strip() for line in lines]


def read_parallel(src: Path, trg: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Line i of `src` translates line i of `trg`; the first `limit` pairs when given."""
    src_lines, trg_lines = read_lines(src), read_lines(trg)
    if len(src_lines) != len(trg_lines):
        raise DataError(f"{src} has {len(src_lines)} lines but {trg} has {len(trg_lines)}; they must be line-aligned")
    return src_lines[:limit], trg_lines[:limit]


def _read_shard(path: Path) -> list[str]:
    """The `txt` member of every sample of a webdataset shard (the member named `<key>.txt`)."""
    texts = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and Path(member.name).name.split(".", 1)[-1] == "txt":
                    texts.append(tar.extractfile(member).read().decode("utf-8").strip())
    except (tarfile.TarError, EOFError) as err:
        raise DataError(f"{path}: not a readable tar shard ({err})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: member '{member.name}' is not UTF-8 text ({err})") from None
    return [text for text in texts if text]


def read_documents(paths: list[Path]) -> list[str]:
    """Texts from plain files (one sentence or document per line; blank lines skipped) and shards."""
    documents = []
    for path in paths:
        if path.name.endswith(TAR_SUFFIXES):
            require_file(path)
            texts = _read_shard(path)
            what = "no sample with a non-empty 'txt' member"
        else:
            texts = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
            what = "no text (empty or only blank lines)"
        if not texts:
            raise DataError(f"{path}: {what}")
        documents.extend(texts)
    return documents
