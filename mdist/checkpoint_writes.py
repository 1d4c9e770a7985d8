"""One rank's writes of one checkpoint, and what a failed write (a full disk or quota, mostly) becomes: recorded,
not raised, so that DeepSpeed's barriers between its writes stay matched; `mdist.checkpoint` then lets the ranks
agree and publishes nothing if any failed."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mdist.checkpoint_files import hashed_save
from mdist.engine import world_size
from mdist.errors import CheckpointError, DiskFullError, disk_full, free_space


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


@dataclass
class Failure:
    """A checkpoint write that failed on some rank (picklable: it travels to the other ranks)."""

    rank: int
    path: str
    message: str
    disk_full: bool
    needed: int | None  # bytes the file needed, where known
    free: int | None  # bytes free on its file system after the failure

    def error(self, target: Path, kept: str | None) -> Exception:
        """The one line every rank raises for checkpoint `target` (DiskFullError for a full disk or quota);
        `kept` is the newest complete checkpoint's tag."""
        kept = f"the newest complete checkpoint, {target.parent / kept}, is intact" if kept else "no complete checkpoint was written before it"
        who = f" on rank {self.rank}" if world_size() > 1 else ""
        removed = f"removed the incomplete {target}; {kept}"
        if not self.disk_full:
            return CheckpointError(f"cannot write {self.path}{who} ({self.message}); {removed}")
        need = f"it needs {_size(self.needed)}" if self.needed is not None else "it needs more"
        free = f", {_size(self.free)} free" if self.free is not None else ""
        return DiskFullError(f"disk full writing {self.path}{who} ({self.message}): {need}{free}; {removed}; "
                             "free space, then continue with --resume")


def _failure(err: Exception, path: Path, state, zipfile: bool) -> Failure:
    """What went wrong writing `path` (the torch `state` it held, if any), with the space it needed and
    the space free; a partial file is removed at once to free its space."""
    full = disk_full(err)
    where = Path(err.filename) if isinstance(err, OSError) and err.filename else path
    needed = hashed_save(state, os.devnull, zipfile)[0] if full and state is not None else None  # counted, not written
    if isinstance(err, OSError) and where.is_file() and (state is not None or where.suffix == ".pt"):
        where.unlink(missing_ok=True)
    free = free_space(where)
    message = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
    rank = torch.distributed.get_rank() if world_size() > 1 else 0
    return Failure(rank, str(where), message, full, needed, free)


class Writes:
    """This rank's writes of one checkpoint into `target`: the (size, digest) of each file it wrote
    through `hashed_save` ({path relative to `target`: ...}), and its first failed write.

    A failed write is recorded, not raised: DeepSpeed's save_checkpoint holds barriers between its
    writes, and a rank that raised half-way would leave the others waiting in one. After a failure
    this rank writes nothing more; the ranks then agree (in `Checkpointer.save`) on whether the
    checkpoint is whole.
    """

    def __init__(self, target: Path):
        self.target = target
        self.written: dict[str, tuple[int, str]] = {}
        self.failure: Failure | None = None

    def attempt(self, path: Path, write, state=None, zipfile: bool = True):
        """`write()`'s result, or None once this rank has a failed write (this one or an earlier)."""
        if self.failure is not None:
            return None  # this rank's checkpoint is lost already
        try:
            return write()
        except Exception as err:  # OSError mostly; torch and DeepSpeed raise RuntimeError too
            self.failure = _failure(err, Path(path), state, zipfile)
            return None

    def save(self, state, path: Path | str, zipfile: bool = True) -> None:
        """`hashed_save` of `state` to `path` (its directory made), recorded."""
        path = Path(path)

        def write():
            path.parent.mkdir(parents=True, exist_ok=True)
            return hashed_save(state, path, zipfile)

        done = self.attempt(path, write, state, zipfile)
        with contextlib.suppress(ValueError):  # a file outside the tag directory is not the checkpoint's
            if done is not None:
                self.written[str(path.resolve().relative_to(self.target.resolve()))] = done

    @contextlib.contextmanager
    def routing(self, engine):
        """While inside, the DeepSpeed engine's checkpoint writes (and the recovery scripts it copies)
        go through `save` / `attempt`. A checkpoint engine that is not torch's (an asynchronous one)
        writes as it would, failures recorded; rank 0 then hashes its files from disk."""
        checkpoint_engine, copy = engine.checkpoint_engine, engine._copy_recovery_script
        if type(checkpoint_engine).__name__ == "TorchCheckpointEngine":
            save = lambda state_dict, path: self.save(state_dict, path, checkpoint_engine.zipfile_serialization)
        else:
            inner = checkpoint_engine.save
            save = lambda state_dict, path: self.attempt(Path(path), lambda: inner(state_dict, path), state_dict)
        checkpoint_engine.save = save  # instance attributes shadow the classes' methods
        engine._copy_recovery_script = lambda save_path: self.attempt(Path(save_path), lambda: copy(save_path))
        try:
            yield self
        finally:
            del checkpoint_engine.save, engine._copy_recovery_script


def first_failure(failures) -> Failure | None:
    """The lowest rank's failure, or None."""
    return next((failed for failed in failures if failed is not None), None)
