"""A full disk loses nothing: a run whose disk fills up while it writes a checkpoint ends with one line
(the file, the space it needed, the space free), removes the incomplete checkpoint (none is ever left
looking complete), keeps the newest complete one, and `--resume` after freeing space continues from it
to the same students as an uninterrupted run.

The run directory lives on a small tmpfs (we are root in CI); a ballast file leaves room for one
checkpoint and a half, so the first fits and the second does not.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mdist.checkpoint import LATEST
from mdist.checkpoint_files import COMPLETE
from mdist.engine import free_port, without_launcher_variables

ROOT = Path(__file__).resolve().parents[1]


def _sets(teacher: Path) -> list[str]:
    sets = ("train.steps=3", "train.save_every=1", "tracking.enabled=false", f"teacher.path={teacher}")
    return ["--recipe", "tiny", *[item for s in sets for item in ("--set", s)]]


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs, unmounted afterwards (also when the test fails)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs: {(mounted.stderr or mounted.stdout).strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _bytes_on_disk(directory: Path) -> int:
    return sum(-(-path.stat().st_size // 4096) * 4096 for path in directory.rglob("*") if path.is_file())


def _distill(out: Path, teacher: Path, *flags: str, ranks: int = 1) -> subprocess.CompletedProcess:
    """`python -m mdist distill` as its own process(es) (the reference too: in-process torch runs more
    threads, whose float sums differ in the last bits)."""
    env = without_launcher_variables(os.environ)
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    launcher = [sys.executable] if ranks == 1 else [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(free_port())]
    return subprocess.run([*launcher, "-m", "mdist", "distill", *_sets(teacher), "--out", str(out), *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher_dir) -> Path:
    """An uninterrupted run of the same settings (its step1 tells how large a checkpoint is)."""
    out = tmp_path_factory.mktemp("reference")
    done = _distill(out, tiny_teacher_dir)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out


def _leave_room_for(disk: Path, nbytes: int) -> Path:
    """A ballast file that fills `disk` but for `nbytes`."""
    ballast = disk / "ballast"
    with open(ballast, "wb") as handle:
        handle.write(bytes(shutil.disk_usage(disk).free - nbytes))
    return ballast


def _students(out: Path) -> dict[str, bytes]:
    return {name: (out / "students" / name / "model.safetensors").read_bytes() for name in ("en", "tr")}


def test_disk_full_during_a_checkpoint_ends_with_one_line_and_resume_loses_nothing(small_disk, tiny_teacher_dir, reference):
    ballast = _leave_room_for(small_disk, _bytes_on_disk(reference / "checkpoints" / "step1") * 3 // 2)  # one checkpoint and a half
    run = small_disk / "run"
    proc = _distill(run, tiny_teacher_dir)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mdist distill: error: ")]
    assert len(errors) == 1, proc.stderr[-4000:]
    line = errors[0]
    assert re.search(rf"disk full writing {re.escape(str(run / 'checkpoints' / 'step2'))}/\S+ \(No space left on device\): "
                     r"it needs [\d.]+ (bytes|KiB|MiB), [\d.]+ (bytes|KiB|MiB) free; ", line), line
    assert f"removed the incomplete {run / 'checkpoints' / 'step2'}; the newest complete checkpoint, {run / 'checkpoints' / 'step1'}, is intact" in line
    assert not (run / "checkpoints" / "step2").exists()  # nothing half-written stays, let alone looking complete
    assert (run / "checkpoints" / "step1" / COMPLETE).is_file() and (run / "checkpoints" / LATEST).read_text() == "step1"
    assert not list((run / "checkpoints").glob(".*tmp*"))

    ballast.unlink()  # space freed: --resume continues from step1 and ends where an uninterrupted run does
    resumed = _distill(run, tiny_teacher_dir, "--resume")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert f"resuming from {run / 'checkpoints' / 'step1'} at step 1" in resumed.stdout
    assert _students(run) == _students(reference)


def test_two_ranks_agree_that_a_checkpoint_failed(small_disk, tiny_teacher_dir, reference):
    """One rank's failed write: no rank publishes the checkpoint, none waits forever, each says the one line."""
    _leave_room_for(small_disk, _bytes_on_disk(reference / "checkpoints" / "step1") * 3 // 2)
    run = small_disk / "run"
    proc = _distill(run, tiny_teacher_dir, ranks=2)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "mdist distill: error: disk full writing" in line]
    assert len(errors) == 2 and errors[0].split(" on rank ")[1] == errors[1].split(" on rank ")[1], proc.stderr[-4000:]
    assert f"writing {run / 'checkpoints' / 'step2'}/" in errors[0], errors[0]
    assert not (run / "checkpoints" / "step2").exists()
    assert (run / "checkpoints" / "step1" / COMPLETE).is_file() and (run / "checkpoints" / LATEST).read_text() == "step1"
