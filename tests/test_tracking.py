"""Tracking never stalls or breaks a run: MLflow calls are bounded in time (a silent server costs
seconds, then calls pause), and with tracking off mlflow is not needed at all."""
from __future__ import annotations

import socket
import sys
import time

import pytest

from mdist.tracking import HTTP_BOUNDS, Tracker


@pytest.fixture
def silent_uri(monkeypatch):
    """A tracking URI whose server accepts connections and never answers (a hung or firewalled host)."""
    for name in HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)  # the defaults under test; restored afterwards
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_silent_server_at_start_costs_seconds(silent_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_uri)
    started = time.monotonic()
    tracker = Tracker(tmp_path, "exp")
    assert tracker.run_id is None  # disabled with a warning, the run goes on
    assert time.monotonic() - started < 20  # MLflow's defaults: 120 s per try, 7 tries with backoff


def test_server_gone_mid_run_never_holds_a_step(silent_uri, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    tracker = Tracker(tmp_path, "exp")  # a real run (sqlite store) ...
    assert tracker.run_id is not None
    monkeypatch.setattr(tracker._sender, "_client", MlflowClient(tracking_uri=silent_uri))  # ... whose server stops answering
    started = time.monotonic()
    for step in range(20):
        tracker.log_metrics({"loss": 1.0}, step)
    assert time.monotonic() - started < 1  # the training thread only appends to the journal
    started = time.monotonic()
    assert tracker.close() == 21  # 20 metric records and the status wait for `mdist runs sync`
    assert time.monotonic() - started < 20


def test_tracking_off_needs_no_mlflow(tmp_path, tiny_teacher_dir, monkeypatch):
    """A whole run with tracking off, with mlflow unimportable (as on a machine without it)."""
    from mdist.config import load_run_config
    from mdist.run import run_distillation

    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import mlflow...` raises ImportError
    cfg = load_run_config("tiny", ["train.steps=1", "tracking.enabled=false", f"teacher.path={tiny_teacher_dir}"])
    summary = run_distillation(cfg, tmp_path / "run")
    assert summary["steps"] == 1 and summary["mlflow_run_id"] is None
