"""A run directory belongs to one run: a new run never writes over an earlier one by accident.

An earlier run leaves `summary.json` (finished), `students/` or `checkpoints/`. A new `mdist
distill` into such a directory is refused unless it continues that run (`--resume`) or replaces it
(`--overwrite`, which removes those outputs first; the MLflow store stays, the new run is added to
it). `--resume` on a run that already finished its steps does nothing, so its summary stays intact.

One run at a time: `RunLock` holds an exclusive `flock` on `OUT/run.lock` for the run's life, taken
before the directory is looked at, so two runs started together cannot both pass the check above. Only
the launching rank 0 takes it (ranks are told apart by the launcher's variables before any process
group exists), so a run's other ranks, on this node or others sharing the directory, are never
refused. The OS drops the lock when its process ends however it ends (SIGKILL, a lost node's lease on
NFS expiring), so a SLURM requeue or a `--resume` after a kill finds it free. The file names the
holder's pid and host for the refusal; it is emptied on a clean exit and never counts as an output.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from mdist.errors import RunDirError

SUMMARY = "summary.json"
OUTPUTS = (SUMMARY, "students", "checkpoints")
LOCK = "run.lock"


def earlier_outputs(out_dir: Path) -> list[str]:
    """Names of an earlier run's outputs in `out_dir` (an empty `checkpoints/` does not count)."""
    found = [name for name in OUTPUTS if (out_dir / name).exists()]
    if "checkpoints" in found and not any((out_dir / "checkpoints").iterdir()):
        found.remove("checkpoints")
    return found


def finished_summary(out_dir: Path, steps: int) -> dict | None:
    """The summary of a run in `out_dir` that finished at least `steps` steps, else None."""
    path = out_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is not valid JSON ({err}); move it away to resume the run") from None
    return summary if isinstance(summary, dict) and summary.get("steps", 0) >= steps else None


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an earlier one's outputs (before anything is built)."""
    found = earlier_outputs(out_dir)
    if found and not resume and not overwrite:
        what = "a finished run" if SUMMARY in found else "an earlier run"
        raise RunDirError(f"{out_dir} holds {what} ({', '.join(found)}); continue it with --resume, "
                          "choose a new --out, or replace it with --overwrite")


def clear_outputs(out_dir: Path) -> None:
    """Remove an earlier run's outputs (`--overwrite`; rank 0 only)."""
    for name in OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def launch_rank() -> int:
    """This process's global rank as its launcher states it (torchrun / deepspeed: RANK; plain srun:
    SLURM_PROCID, as `mdist.engine` reads it); 0 for a bare process."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return 0


class RunLock:
    """`with RunLock(out_dir):` the run's exclusive hold on `out_dir` (rank 0 only; see the module doc).

    A second holder is refused at once with a RunDirError naming the first one's pid and host.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        if launch_rank() != 0:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirError(f"{self.out_dir} is in use by another run ({holder}, lock {self.path}); "
                              "wait for it to end, or choose another --out") from None
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            print(f"warning: cannot lock {self.path} ({err.strerror}; a file system without flock, e.g. Lustre "
                  "mounted without -o flock): a second run into this directory would not be stopped", file=sys.stderr)
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # the file names no holder once the run is over
            except OSError:
                pass
            os.close(self.fd)  # releases the lock (as the process's end would)
            self.fd = None


def _holder(fd: int) -> str:
    """Who holds the lock, as it wrote it (it may not have written yet: wait a moment for it)."""
    for _ in range(50):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
        time.sleep(0.02)
    return "its pid is not written yet"
