"""Errors that reach the user as one clear line (no traceback).

A leaf: it imports nothing of mdist, so any module can raise these without an import circle.
"""
import errno
import math
import os
import shutil
from pathlib import Path


class ConfigError(ValueError):
    """A bad run configuration; the message names the key or path."""


class TeacherError(ValueError):
    """The teacher directory is missing, corrupt, not XLM-R-family, or its tokenizer does not fit it."""


class DataError(ValueError):
    """Bad training or evaluation data; the message names the file (and line where known)."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; the message names step, what was trained and the term."""

    @classmethod
    def check(cls, step: int, where: str, terms: dict[str, float]) -> None:
        """Stop unless every loss term of `step` is finite; the line names the first one that is not
        and shows them all. Distillation and fine-tuning word a diverged run alike."""
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        if bad:
            raise cls(f"step {step}: {where}: loss term '{bad[0]}' is not finite ({', '.join(f'{k}={v}' for k, v in terms.items())})")


class RunDirError(ValueError):
    """The output directory holds an earlier run that this command would overwrite; names it."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or unreadable; the message names the file and what to do."""


class DiskFullError(RuntimeError):
    """The disk (or quota) filled up while the run wrote a file; names the file, the space it needed and
    what was kept. Not bad input: `mdist` reports it as one line with exit code 1."""


class DistributedError(RuntimeError):
    """The ranks did not meet within `dist.timeout_s`; the message names the rank(s) or the barrier waited for."""


class TrackingUnreachableError(ConnectionError):
    """The MLflow tracking server does not answer; the message names it (and what waits to be sent)."""


UserError = (ConfigError, TeacherError, DataError, NonFiniteLossError, RunDirError, CheckpointError, DistributedError,
             TrackingUnreachableError, FileNotFoundError)


def disk_full(err: BaseException) -> bool:
    """Whether `err` says the disk or the user's quota is full."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def free_space(path: Path) -> int | None:
    """Bytes free on the file system that holds `path` (or its nearest existing parent); None if none exists."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    return shutil.disk_usage(existing).free if existing is not None else None


def disk_full_line(err: OSError) -> str:
    """One line for a full disk met outside a checkpoint (the export, the summary): the file and the space left."""
    where = Path(err.filename) if err.filename else None
    free = free_space(where) if where is not None else None
    free = f", {free} bytes free" if free is not None else ""
    return f"{err.strerror} writing {where or 'a file'}{free}; free space, then continue with --resume"


def path_problem(path: Path, want_dir: bool) -> str | None:
    """Why `path` cannot be used as the directory (`want_dir`) or file asked for, in a few words; None if it can."""
    if not path.exists():
        return "does not exist"
    if path.is_dir() != want_dir:
        return "is a directory, not a file" if path.is_dir() else "is a file, not a directory"
    if not os.access(path, os.R_OK | (os.X_OK if want_dir else 0)):
        return "is not readable (permission denied)"
    return None


def output_problem(path: Path, want_dir: bool) -> str | None:
    """Why `path` cannot be written as the directory (`want_dir`) or file asked for; None if it can."""
    if path.exists():
        if path.is_dir() != want_dir:
            return "is a directory, not a file" if path.is_dir() else "is a file, not a directory"
        return None if os.access(path, os.W_OK) else "is not writable (permission denied)"
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        return f"cannot be created: '{parent}' is a file, not a directory"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot be created: '{parent}' is not writable (permission denied)"


def require_file(path: Path, error: type[Exception] = FileNotFoundError) -> None:
    """Stop with one line unless `path` is a readable file: `'{path}' does not exist`, `... is a directory, not a file`, ..."""
    problem = path_problem(path, want_dir=False)
    if problem:
        raise error(f"'{path}' {problem}")
