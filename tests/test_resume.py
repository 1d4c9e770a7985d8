"""Exact resume: a run killed (SIGKILL) or pre-empted (SIGTERM) after a checkpoint and resumed with
`--resume` ends with bit-identical student weights to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mdist.engine import without_launcher_variables

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--recipe", "tiny", "--set", "train.steps=8", "--set", "train.save_every=2"]


def _env() -> dict:
    env = without_launcher_variables(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def _distill(out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mdist", "distill", *ARGS, "--out", str(out), *extra], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mdist", "distill", *ARGS, "--out", str(out)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.is_file():
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.01)


def _students(out: Path) -> dict:
    return {name: load_file(out / "students" / name / "model.safetensors") for name in ("en", "tr")}


def _assert_same(a: dict, b: dict) -> None:
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert (a[name][key] == b[name][key]).all(), f"{name}: {key} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    _distill(out)
    return _students(out)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, reference):
    proc = _start(tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "summary.json").exists(), "the run finished before it was killed"
    resumed = _distill(tmp_path, "--resume")
    assert "resuming from" in resumed.stdout + resumed.stderr
    _assert_same(reference, _students(tmp_path))


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path, reference):
    proc = _start(tmp_path)
    _wait_for_checkpoint(proc, tmp_path)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "stopped by signal" in output
    assert not (tmp_path / "students").exists()
    tag = (tmp_path / "checkpoints" / "latest").read_text().strip()
    assert tag != "step8" and (tmp_path / "checkpoints" / tag / "COMPLETE").is_file()
    resumed = _distill(tmp_path, "--resume")
    assert f"checkpoints/{tag} at step" in resumed.stdout + resumed.stderr
    _assert_same(reference, _students(tmp_path))

    from mlflow.tracking import MlflowClient  # one MLflow run across the interruption, metrics for all steps

    runs = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["0", "1"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
