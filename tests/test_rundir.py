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
