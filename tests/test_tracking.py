"""Tracking never stalls or breaks a run: MLflow calls are bounded in time (a silent server costs
seconds, then calls pause), and with tracking off mlflow is not needed at all. Records go in batches,
a returning server is noticed within seconds, close() sends what waits at once, and the `mdist runs`
commands say in one line when the server does not answer."""
from __future__ import annotations

import socket
import sys
import time

import pytest
import requests

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


class Outage:
    """The sender's MLflow client behind a switch: while `away`, each call hangs `hang` s and then
    fails as an unreachable server does; every call is counted (name, time)."""

    def __init__(self, client, away: bool = True, hang: float = 0.0):
        self.client, self.away, self.hang, self.calls = client, away, hang, []

    def __getattr__(self, name):
        real = getattr(self.client, name)

        def call(*args, **kwargs):
            self.calls.append((name, time.monotonic()))
            if self.away:
                time.sleep(self.hang)
                raise requests.exceptions.ConnectionError("connection refused")
            return real(*args, **kwargs)

        return call


@pytest.fixture
def sqlite_tracker(tmp_path, monkeypatch):
    """A Tracker on the run directory's sqlite store, its sender's client behind an Outage (up)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(tmp_path, "exp")
    assert tracker.run_id is not None
    outage = Outage(tracker._sender._client, away=False)
    monkeypatch.setattr(tracker._sender, "_client", outage)
    yield tracker, outage
    tracker.close()


def _history(tracker, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(tracker.journal.header["uri"]).get_metric_history(tracker.run_id, key))


def test_records_of_many_steps_go_in_one_batch(sqlite_tracker):
    tracker, outage = sqlite_tracker
    for step in range(30):  # a step every 20 ms: record by record, this was one request each
        tracker.log_metrics({"loss": 1.0, "lr": 0.1}, step)
        time.sleep(0.02)
    assert tracker.close() == 0
    assert [name for name, _ in outage.calls].count("log_batch") <= 2, outage.calls
    assert _history(tracker, "loss") == list(range(30))


def test_a_returning_server_is_noticed_within_seconds(sqlite_tracker):
    tracker, outage = sqlite_tracker
    outage.away = True
    for step in range(5):
        tracker.log_metrics({"loss": 1.0}, step)
    while len(outage.calls) < 4:  # failed attempts, backing off (after 1, 2 and 4 s): 7 s away
        time.sleep(0.05)
    time.sleep(0.5)
    outage.away = False
    back = time.monotonic()
    while tracker.journal.pending() and time.monotonic() - back < 30:
        time.sleep(0.05)
    assert not tracker.journal.pending()
    assert time.monotonic() - back < 5.5  # a backoff growing on to a minute: 7.5 s here, minutes later on


def test_close_sends_everything_at_once_when_the_server_is_back(sqlite_tracker):
    tracker, outage = sqlite_tracker
    outage.away, outage.hang = True, 0.5
    for step in range(10):
        tracker.log_metrics({"loss": 1.0}, step)
    while len(outage.calls) < 2:  # the second failing attempt is under way ...
        time.sleep(0.01)
    outage.away = False  # ... when the server returns and the run ends
    started = time.monotonic()
    assert tracker.close() == 0  # not left to `mdist runs sync` because that attempt failed
    assert time.monotonic() - started < 3
    assert _history(tracker, "loss") == list(range(10))


def test_runs_sync_and_runs_with_the_server_unreachable_say_so_in_one_line(tmp_path, capsys, monkeypatch):
    from mdist.cli import main
    from mdist.tracking import Journal

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
    journal = Journal.open(tmp_path / "mlflow-queue" / "distill.jsonl", {"uri": uri, "experiment": "exp"})
    for step in range(4):
        journal.log_metrics({"loss": 1.0}, step)
    assert main(["runs", "sync", str(tmp_path)]) != 0
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert f"{uri} is unreachable; 4 record(s) wait in {tmp_path}" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["runs"]) != 0
    out, err = capsys.readouterr()
    assert out == "" and err == f"mdist runs: error: the tracking server {uri} is unreachable\n"


def test_a_new_run_directory_store_starts_as_a_copy_of_the_cached_empty_store(tmp_path, monkeypatch):
    """The first embedded store is built by MLflow and kept, empty, in the cache; the next is a copy of it
    (a row planted in the cached copy shows up), with its own Default experiment's artifact location."""
    import sqlite3

    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = tmp_path / "cache" / "mdist" / f"mlflow-{mlflow.__version__}-empty.db"
    first = Tracker(tmp_path / "first", "exp")
    first.close()
    assert template.is_file()
    with sqlite3.connect(template) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)  # kept before any run was made
        db.execute("INSERT INTO experiment_tags (key, value, experiment_id) VALUES ('planted', 'in the template', 0)")
    db.close()

    second = Tracker(tmp_path / "second", "exp")
    second.log_metrics({"loss": 0.5}, 0)
    assert second.close() == 0
    client = MlflowClient(tracking_uri=second.journal.header["uri"])
    default = client.get_experiment("0")
    assert default.tags.get("planted") == "in the template"
    assert default.artifact_location == f"{(tmp_path / 'second' / 'mlartifacts').resolve().as_uri()}/0"
    assert [m.value for m in client.get_metric_history(second.run_id, "loss")] == [0.5]
    assert client.get_run(second.run_id).info.status == "FINISHED"


def test_a_store_created_meanwhile_by_another_process_is_kept(tmp_path, monkeypatch):
    """Two stages of a study create the same store at once: the second never overwrites the first's."""
    import sqlite3

    from mdist.tracking.store_template import create_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    create_store(tmp_path / "first.db", (tmp_path / "a").as_uri())  # builds the cached template
    store = tmp_path / "study.db"
    create_store(store, (tmp_path / "a").as_uri())
    with sqlite3.connect(store) as db:
        db.execute("INSERT INTO experiment_tags (key, value, experiment_id) VALUES ('logged', 'by the first stage', 0)")
    db.close()
    create_store(store, (tmp_path / "b").as_uri())  # the second stage found it absent a moment earlier
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT value FROM experiment_tags WHERE key = 'logged'").fetchall() == [("by the first stage",)]
        assert db.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()[0].startswith((tmp_path / "a").as_uri())
    db.close()


CREATE_STORE = """
import sys, time
from pathlib import Path
from mdist.tracking.store_template import create_store
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all start together
create_store(Path(sys.argv[1]), sys.argv[2])
"""


def test_stores_created_at_once_with_no_cached_template_give_one_whole_store(tmp_path):
    """The stages of a study on a machine whose cache is empty all build the study's store at once:
    every one succeeds and the store is one whole MLflow store, not migrations run over each other."""
    import os
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    store = tmp_path / "study.db"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    start = str(time.time() + 8)  # after the imports of every process
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_STORE, str(store), (tmp_path / "a").as_uri(), start], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "study.db"]  # no build or copy left behind
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "loss", 0.5)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]
