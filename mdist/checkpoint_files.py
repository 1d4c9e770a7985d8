"""A checkpoint's files and whether they are intact: `COMPLETE` records each file's size and sha256, hashed
as `hashed_save` writes it (nothing is read back); `size_problems` and `mismatches` compare the files on disk
with it (resume, `mdist runs verify`; `verify_checkpoints` here, so that command loads no DeepSpeed).
Layout and publishing: `mdist.checkpoint`."""
from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

COMPLETE = "COMPLETE"
HASH = "sha256"  # the key in COMPLETE and the hashlib algorithm
_CHUNK = 16 << 20  # bytes per read when a file is hashed from disk
_OVERLAP = 1 << 20  # writes of at least this many bytes are hashed on a second thread while written


class _HashingWriter:
    """A write-only file for `torch.save` that hashes every byte on its way to `handle`. A large
    buffer (a tensor's storage) is hashed on `pool`'s thread while this one writes it: hashlib and
    file writes both release the GIL, so where a core is free a save costs about the longer of the
    two instead of their sum. Each write waits for its hash, so the digest sees the bytes in order."""

    def __init__(self, handle, pool: ThreadPoolExecutor):
        self.handle = handle
        self.pool = pool
        self.digest = hashlib.new(HASH)
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        self.size += view.nbytes
        if view.nbytes < _OVERLAP:
            self.digest.update(view)
            return self.handle.write(view)
        hashing = self.pool.submit(self.digest.update, view)
        try:
            return self.handle.write(view)
        finally:
            hashing.result()

    def flush(self) -> None:
        self.handle.flush()


def hashed_save(obj, path: Path | str, zipfile: bool = True) -> tuple[int, str]:
    """`torch.save(obj, path)` that returns (size, hex digest) of the bytes it wrote, hashed as they
    were written: the file is never read back."""
    with open(path, "wb") as handle, ThreadPoolExecutor(1, thread_name_prefix="mdist-hash") as pool:
        writer = _HashingWriter(handle, pool)
        torch.save(obj, writer, _use_new_zipfile_serialization=zipfile)
    return writer.size, writer.digest.hexdigest()


def file_digest(path: Path) -> str:
    """The hex digest of a file on disk (verification, and files written outside `hashed_save`)."""
    digest = hashlib.new(HASH)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and `os.replace`: a reader (or a run killed
    meanwhile) sees the old file or the whole new one, never part of it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def share_of_files(sizes: dict[str, int], rank: int, world: int) -> list[str]:
    """The files rank `rank` of `world` hashes when a checkpoint is verified: the largest file first
    to the rank with the fewest bytes so far, the same split on every rank."""
    load = [0] * world
    mine = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        least = load.index(min(load))
        load[least] += sizes[name]
        if least == rank:
            mine.append(name)
    return mine


def read_marker(target: Path) -> dict:
    """`COMPLETE` of a checkpoint as a dict ({} when it holds no JSON: the oldest markers held only the step)."""
    try:
        marker = json.loads((target / COMPLETE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return marker if isinstance(marker, dict) else {}


def mismatches(target: Path, names: list[str] | None = None) -> list[str]:
    """Each file of `names` (default: all that `COMPLETE` hashed) whose bytes differ from its recorded
    hash, as a sentence naming it; files that are missing or resized are left to the size check."""
    marker = read_marker(target)
    hashes, sizes = marker.get(HASH) or {}, marker.get("files") or {}
    found = []
    for name in hashes if names is None else names:
        path = target / name
        if name not in hashes or not path.is_file() or (name in sizes and path.stat().st_size != sizes[name]):
            continue
        if file_digest(path) != hashes[name]:
            found.append(f"{path} does not match the {HASH} that {target / COMPLETE} records for it (its bytes changed after it was written)")
    return found


def size_problems(target: Path, sizes: dict[str, int], names) -> list[str]:
    """Each file of `names` that is missing from `target` or whose size differs from `sizes`, as a sentence."""
    found = []
    for name in names:
        path = target / name
        if not path.is_file():
            found.append(f"{path} is missing from a complete checkpoint")
        elif name in sizes and path.stat().st_size != sizes[name]:
            found.append(f"{path} has {path.stat().st_size} bytes, {sizes[name]} were written (truncated or replaced)")
    return found


def complete_tags(directory: Path) -> list[str]:
    """Tags of the complete checkpoints in `directory`, oldest first."""
    steps = [int(m.group(1)) for path in directory.glob("step*") if (m := re.fullmatch(r"step(\d+)", path.name)) and (path / COMPLETE).is_file()]
    return [f"step{step}" for step in sorted(steps)]


def verify_checkpoints(directory: Path) -> tuple[list[str], bool]:
    """Check every complete checkpoint in `directory` as `--resume` would (sizes, then contents
    against `COMPLETE`), all in this process and without loading anything. Returns the lines to
    print (one per checkpoint and each problem, then what `--resume` would do) and whether every
    complete checkpoint verified."""
    lines, outcome, ok = [], None, True
    for tag in reversed(complete_tags(directory)):  # newest first, as --resume tries them
        target = directory / tag
        marker = read_marker(target)
        sizes = marker.get("files") or {}
        resized = size_problems(target, sizes, sizes)
        problems = resized + mismatches(target)
        if problems:
            ok = False
            lines += [f"{target}: FAILED"] + [f"  {problem}" for problem in problems]
            if resized and outcome is None:
                outcome = f"--resume would stop at {target} ({resized[0]})"
            continue
        if marker.get(HASH):
            lines.append(f"{target}: ok ({len(sizes)} files, sizes and {HASH})")
        else:
            lines.append(f"{target}: ok, sizes only ({len(sizes)} files; its {COMPLETE} records no content hashes: an older mdist wrote it)")
        if outcome is None:
            outcome = f"--resume would continue from {target}"
    for path in sorted(directory.glob("step*")):
        if path.is_dir() and not (path / COMPLETE).is_file():
            lines.append(f"{path}: incomplete (no {COMPLETE}), never resumed from")
    if outcome is None:
        outcome = f"no complete checkpoint in {directory}" + (": --resume would start from step 0" if ok else " verifies: --resume would stop")
    return [*lines, outcome], ok
