"""A run directory belongs to one run: `--resume` on a finished run changes nothing, a run killed
after its last checkpoint still gets its real final losses, `--overwrite` replaces the earlier run.
(Refusals without either flag: test_bad_input.py.)"""
from __future__ import annotations

import json
import shutil

import pytest

from mdist.cli import main

ARGS = ["--recipe", "tiny", "--set", "train.steps=2", "--set", "tracking.enabled=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_teacher_dir):
    out = tmp_path_factory.mktemp("finished")
    assert main(["distill", *ARGS, "--set", f"teacher.path={tiny_teacher_dir}", "--out", str(out)]) == 0
    return out


def _distill(out, teacher, *flags) -> int:
    return main(["distill", *ARGS, "--set", f"teacher.path={teacher}", "--out", str(out), *flags])


def test_resume_on_a_finished_run_changes_nothing(finished, tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert _distill(out, tiny_teacher_dir, "--resume") == 0
    assert "already finished 2 steps; nothing to do" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_resume_after_the_last_checkpoint_writes_the_real_final_losses(finished, tiny_teacher_dir, tmp_path):
    """Killed between the final checkpoint and the export: --resume exports with the losses of the last step."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "summary.json").unlink()
    shutil.rmtree(out / "students")
    assert _distill(out, tiny_teacher_dir, "--resume") == 0
    want = json.loads((finished / "summary.json").read_text())["final_losses"]
    assert want and json.loads((out / "summary.json").read_text())["final_losses"] == want
    assert (out / "students" / "en" / "model.safetensors").read_bytes() == (finished / "students" / "en" / "model.safetensors").read_bytes()


def test_overwrite_replaces_the_earlier_run(finished, tiny_teacher_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "checkpoints" / "step7").mkdir()  # a checkpoint the new run would not write
    (out / "summary.json").write_text(json.dumps({"steps": 99}))
    assert _distill(out, tiny_teacher_dir, "--overwrite") == 0
    assert not (out / "checkpoints" / "step7").exists() and (out / "checkpoints" / "latest").read_text() == "step2"
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


# ---- one run per directory: the lock ------------------------------------------------------------

def _start(out, teacher, *flags, steps: int = 2):
    """`python -m mdist distill` into `out` as its own process (group), as a user or scheduler starts it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mdist.engine import without_launcher_variables

    env = without_launcher_variables(os.environ)
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    argv = ["--recipe", "tiny", "--set", f"train.steps={steps}", "--set", "train.save_every=1", "--set", "tracking.enabled=false",
            "--set", f"teacher.path={teacher}", "--out", str(out), *flags]
    return subprocess.Popen([sys.executable, "-m", "mdist", "distill", *argv], cwd=Path(__file__).resolve().parents[1], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_second_run_into_the_same_directory_stops_at_once_naming_the_first(tiny_teacher_dir, tmp_path):
    """Started a fraction of a second apart, before either has a checkpoint: one runs to the end, the
    other stops while the first still runs, with one line naming the first one's pid."""
    import time

    first = _start(tmp_path / "run", tiny_teacher_dir)
    time.sleep(0.2)
    second = _start(tmp_path / "run", tiny_teacher_dir)
    runs = {first.pid: first, second.pid: second}
    deadline = time.time() + 300
    while all(proc.poll() is None for proc in runs.values()):
        assert time.time() < deadline
        time.sleep(0.05)
    loser = next(proc for proc in runs.values() if proc.poll() is not None)
    winner = next(proc for proc in runs.values() if proc is not loser)
    still_running = winner.poll() is None
    out, err = loser.communicate()
    assert loser.returncode == 2, (out + err)[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mdist distill: error: ") and "Traceback" not in err, err[-3000:]
    assert f"{tmp_path / 'run'} is in use by another run (pid {winner.pid} on " in lines[0], lines[0]
    assert still_running, "the refused run only stopped after the first one had finished"
    out, err = winner.communicate(timeout=300)
    assert winner.returncode == 0, (out + err)[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
    assert (tmp_path / "run" / "run.lock").read_text() == ""  # a finished run names no holder


def test_a_killed_run_leaves_no_stale_lock(tiny_teacher_dir, tmp_path):
    """SIGKILL after the first checkpoint (no clean-up runs): `--resume` starts and finishes at once."""
    import os
    import signal
    import time

    killed = _start(tmp_path / "run", tiny_teacher_dir, steps=40)
    deadline = time.time() + 300
    while not (tmp_path / "run" / "checkpoints" / "latest").is_file():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert f"pid {killed.pid} on " in (tmp_path / "run" / "run.lock").read_text()  # its note stays, its lock does not
    resumed = _start(tmp_path / "run", tiny_teacher_dir, "--resume", steps=2)  # one more step is enough
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming from" in out, (out + err)[-3000:]


def test_only_the_launching_rank_0_takes_the_lock(tmp_path, monkeypatch):
    """A run's other ranks (here: RANK=1, or SLURM_PROCID=1 under plain srun) are never refused; a
    second rank 0 is, without waiting."""
    from mdist.errors import RunDirError
    from mdist.rundir import RunLock

    monkeypatch.delenv("RANK", raising=False)
    with RunLock(tmp_path) as held:
        assert held.fd is not None
        for variables in ({"RANK": "1"}, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}):
            with monkeypatch.context() as env:
                for key, value in variables.items():
                    env.setenv(key, value)
                with RunLock(tmp_path) as other:
                    assert other.fd is None
        with pytest.raises(RunDirError, match=r"is in use by another run \(pid \d+ on "):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released on leaving the block
        pass
