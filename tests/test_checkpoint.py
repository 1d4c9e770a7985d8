"""Checkpoint publishing rules: only a complete checkpoint is ever picked, the newest one whose files
verify (sizes and sha256 in `COMPLETE`), and a fallback is said; `mdist runs verify` checks by hand."""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mdist.checkpoint import LATEST, fallback_note, latest_tag, rng_state, set_rng_state
from mdist.checkpoint_files import COMPLETE, HASH, hashed_save
from mdist.cli import main
from mdist.preemption import StopFlag

SETS = ("train.steps=3", "train.save_every=1", "tracking.enabled=false")


def distill(out: Path, teacher: Path, *flags: str) -> int:
    sets = (*SETS, f"teacher.path={teacher}")
    return main(["distill", "--recipe", "tiny", "--out", str(out), *[item for s in sets for item in ("--set", s)], *flags])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher_dir) -> Path:
    """An uninterrupted 3-step run with a checkpoint after every step."""
    out = tmp_path_factory.mktemp("reference")
    assert distill(out, tiny_teacher_dir) == 0
    return out


def copy_checkpoints(reference: Path, run: Path) -> Path:
    shutil.copytree(reference / "checkpoints", run / "checkpoints")
    return run / "checkpoints"


def flip_byte(path: Path) -> None:
    """One bit in the middle of the file changed, its size kept (bit rot)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def same_students(run: Path, reference: Path) -> bool:
    paths = [Path("students") / name / "model.safetensors" for name in ("en", "tr")]
    return all((run / path).read_bytes() == (reference / path).read_bytes() for path in paths)


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


def test_resume_falls_back_to_the_newest_complete_checkpoint_and_says_so(tmp_path, reference, tiny_teacher_dir, capsys):
    """The newest checkpoint lost its marker and `latest` is gone: resume from the one before, exactly."""
    run = tmp_path / "run"
    checkpoints = copy_checkpoints(reference, run)
    shutil.rmtree(checkpoints / "step3")
    (checkpoints / "step2" / COMPLETE).unlink()
    (checkpoints / LATEST).unlink()
    capsys.readouterr()
    assert distill(run, tiny_teacher_dir, "--resume") == 0
    said = capsys.readouterr().out
    assert f"{checkpoints / LATEST} is missing; using the newest complete checkpoint, {checkpoints / 'step1'}" in said
    assert f"resuming from {checkpoints / 'step1'} at step 1" in said
    assert same_students(run, reference)


def test_complete_records_each_files_sha256(reference):
    for tag in ("step1", "step2", "step3"):
        marker = json.loads((reference / "checkpoints" / tag / COMPLETE).read_text())
        assert set(marker[HASH]) == set(marker["files"]) == {"mp_rank_00_model_states.pt", "rank0.pt"}
        for name, digest in marker[HASH].items():
            assert hashlib.sha256((reference / "checkpoints" / tag / name).read_bytes()).hexdigest() == digest, name


def test_hashed_save_hashes_what_it_writes(tmp_path):
    state = {"weights": torch.arange(1000, dtype=torch.float32), "step": 3}
    for zipfile in (True, False):
        size, digest = hashed_save(state, tmp_path / "state.pt", zipfile=zipfile)
        data = (tmp_path / "state.pt").read_bytes()
        assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
        assert torch.equal(torch.load(tmp_path / "state.pt")["weights"], state["weights"])


def test_a_flipped_byte_is_named_and_resume_falls_back_to_the_checkpoint_before(tmp_path, reference, tiny_teacher_dir, capsys):
    """Bit rot in the newest checkpoint's model states (size unchanged; the run was stopped after
    step2): `runs verify` names the file and fails; `--resume` names it, resumes from step1 and ends
    with the uninterrupted run's students (the rotten weights or Adam moments would change them);
    afterwards every checkpoint verifies (step2 was saved anew)."""
    run = tmp_path / "run"
    checkpoints = copy_checkpoints(reference, run)
    shutil.rmtree(checkpoints / "step3")
    (checkpoints / LATEST).write_text("step2")
    broken = checkpoints / "step2" / "mp_rank_00_model_states.pt"
    flip_byte(broken)
    capsys.readouterr()
    assert main(["runs", "verify", str(run)]) == 1
    said = capsys.readouterr().out.splitlines()
    assert said[:2] == [f"{checkpoints / 'step2'}: FAILED", f"  {broken} does not match the sha256 that {checkpoints / 'step2' / COMPLETE} records for it "
                                                                 "(its bytes changed after it was written)"], said
    assert said[2:] == [f"{checkpoints / 'step1'}: ok (2 files, sizes and sha256)", f"--resume would continue from {checkpoints / 'step1'}"], said

    assert distill(run, tiny_teacher_dir, "--resume") == 0
    said = capsys.readouterr().out
    assert f"{broken} does not match the sha256 that {checkpoints / 'step2' / COMPLETE} records for it" in said
    assert f"using the newest older checkpoint that verifies, {checkpoints / 'step1'}" in said
    assert f"resuming from {checkpoints / 'step1'} at step 1" in said
    assert same_students(run, reference)
    assert main(["runs", "verify", str(run)]) == 0


def test_a_checkpoint_without_hashes_is_resumed_on_sizes_and_said_once(tmp_path, reference, tiny_teacher_dir, capsys):
    """`COMPLETE` of an older mdist lists sizes only: accepted, and the resume says only sizes were checked."""
    run = tmp_path / "run"
    checkpoints = copy_checkpoints(reference, run)
    for tag in ("step2", "step3"):
        marker = json.loads((checkpoints / tag / COMPLETE).read_text())
        del marker[HASH]
        (checkpoints / tag / COMPLETE).write_text(json.dumps(marker))
    capsys.readouterr()
    assert main(["runs", "verify", str(checkpoints)]) == 0
    assert f"{checkpoints / 'step3'}: ok, sizes only (2 files; its COMPLETE records no content hashes" in capsys.readouterr().out
    flip_byte(checkpoints / "step2" / "rank0.pt")  # not seen without a hash
    assert main(["runs", "verify", str(run)]) == 0
    capsys.readouterr()
    assert distill(run, tiny_teacher_dir, "--resume", "--set", "train.steps=4") == 0
    said = capsys.readouterr().out
    assert said.count("records no content hashes") == 1
    assert f"{checkpoints / 'step3' / COMPLETE} records no content hashes (an older mdist wrote it): only file sizes were checked" in said
    assert f"resuming from {checkpoints / 'step3'} at step 3" in said
    assert json.loads((checkpoints / "step4" / COMPLETE).read_text())[HASH]  # new checkpoints are hashed


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
