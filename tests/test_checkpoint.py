"""Checkpoint publishing rules: only a complete checkpoint named by `latest` is ever picked."""
from __future__ import annotations

import random

import numpy as np
import torch

from mdist.checkpoint import COMPLETE, LATEST, latest_tag, rng_state, set_rng_state
from mdist.preemption import StopFlag


def test_latest_needs_marker_and_complete(tmp_path):
    assert latest_tag(tmp_path) is None
    (tmp_path / "step2").mkdir()
    (tmp_path / "step2" / COMPLETE).write_text("2\n")
    (tmp_path / LATEST).write_text("step2")
    assert latest_tag(tmp_path) == "step2"
    (tmp_path / "step4").mkdir()  # an interrupted save: files, but no COMPLETE, and `latest` unchanged
    (tmp_path / "step4" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    assert latest_tag(tmp_path) == "step2"
    (tmp_path / LATEST).write_text("step4")  # even if something named it, an incomplete tag is refused
    assert latest_tag(tmp_path) is None


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
