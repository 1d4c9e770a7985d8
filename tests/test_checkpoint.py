"""Checkpoint publishing rules: only a complete checkpoint is ever picked, the newest one, and a fallback is said."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from mdist.checkpoint import COMPLETE, LATEST, fallback_note, latest_tag, rng_state, set_rng_state
from mdist.preemption import StopFlag


def test_newest_complete_checkpoint_wins(tmp_path):
    assert latest_tag(tmp_path) is None
    for step in (2, 10):
        (tmp_path / f"step{step}").mkdir()
        (tmp_path / f"step{step}" / COMPLETE).write_text(f"{step}\n")
    (tmp_path / LATEST).write_text("step10")
    assert latest_tag(tmp_path) == "step10" and fallback_note(tmp_path, "step10") is None
    (tmp_path / "step12").mkdir()  # an interrupted save: files, but no COMPLETE, and `latest` unchanged
    (tmp_path / "step12" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    assert latest_tag(tmp_path) == "step10"
    (tmp_path / "step10" / COMPLETE).unlink()  # a lost marker: `latest` names an incomplete checkpoint
    assert latest_tag(tmp_path) == "step2"
    assert fallback_note(tmp_path, "step2") == f"{tmp_path / LATEST} names 'step10', which is not a newer complete checkpoint; using the newest complete checkpoint, {tmp_path / 'step2'}"
    (tmp_path / LATEST).unlink()
    assert fallback_note(tmp_path, "step2").startswith(f"{tmp_path / LATEST} is missing;")


def test_resume_falls_back_to_the_newest_complete_checkpoint_and_says_so(tmp_path, tiny_teacher_dir, capsys):
    """The newest checkpoint lost its marker and `latest` is gone: resume from the one before, exactly."""
    from mdist.cli import main

    def distill(out: Path, *flags: str) -> int:
        sets = ("train.steps=3", "train.save_every=1", "tracking.enabled=false", f"teacher.path={tiny_teacher_dir}")
        return main(["distill", "--recipe", "tiny", "--out", str(out), *[item for s in sets for item in ("--set", s)], *flags])

    assert distill(tmp_path / "reference") == 0
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "reference" / "checkpoints", run / "checkpoints")
    shutil.rmtree(run / "checkpoints" / "step3")
    (run / "checkpoints" / "step2" / COMPLETE).unlink()
    (run / "checkpoints" / LATEST).unlink()
    capsys.readouterr()
    assert distill(run, "--resume") == 0
    said = capsys.readouterr().out
    assert f"{run / 'checkpoints' / LATEST} is missing; using the newest complete checkpoint, {run / 'checkpoints' / 'step1'}" in said
    assert f"resuming from {run / 'checkpoints' / 'step1'} at step 1" in said
    for name in ("en", "tr"):
        path = Path("students") / name / "model.safetensors"
        assert (run / path).read_bytes() == (tmp_path / "reference" / path).read_bytes()


def test_rng_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_stop_flag_records_signal_without_raising():
    import os
    import signal

    flag = StopFlag().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.signum == signal.SIGUSR1 and flag.agreed()
    finally:
        flag.restore()
