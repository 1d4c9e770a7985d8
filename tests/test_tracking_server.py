"""MLflow as the lab notebook, against a real `mlflow server` (own sqlite store, free port on
127.0.0.1, stopped by its pid): a run records everything, nothing is lost while the server is away
(killed and restarted mid-run, or never back until `mdist runs sync`), a resumed run logs no step
twice, and `mdist runs` tabulates and plots runs with their evaluations and fine-tunings.
(A run logging online is also covered by tests/test_resume.py and test_distill.py on the sqlite store.)"""
from __future__ import annotations

import json
import time

import pytest

from mdist.cli import main
from mdist.config import load_run_config
from mdist.engine import free_port
from mdist.run import run_distillation
from mdist.tracking import Journal, Tracker, journals
from mdist.tracking import tracker as tracker_module
from mlflow_server import Server


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = Server(tmp_path / "server", free_port())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    yield srv
    srv.stop()


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _tiny(steps: int, *extra: str):
    return load_run_config("tiny", [f"train.steps={steps}", "train.log_every=1", *extra])


def test_server_killed_and_restarted_mid_run_loses_and_repeats_nothing(server, tmp_path):
    server.start()
    tracker = Tracker(tmp_path, "exp", name="run")
    keys = ("en/en/loss", "tr/tr/loss", "lr")
    for step in range(5):
        tracker.log_metrics({k: step + i for i, k in enumerate(keys)}, step)
    server.stop()
    logged_at = {}
    for step in range(5, 12):  # the server is away: these wait in the journal with their own time
        logged_at[step] = int(time.time() * 1000)
        tracker.log_metrics({k: step + i for i, k in enumerate(keys)}, step)
        time.sleep(0.02)
    time.sleep(2)
    server.start()
    for step in range(12, 15):
        tracker.log_metrics({k: step + i for i, k in enumerate(keys)}, step)
    assert tracker.close() == 0
    client = _client(server.uri)
    for i, key in enumerate(keys):
        history = client.get_metric_history(tracker.run_id, key)
        assert sorted(m.step for m in history) == list(range(15)), key  # each step exactly once
        assert all(m.value == m.step + i for m in history)
    late = {m.step: m.timestamp for m in client.get_metric_history(tracker.run_id, "lr")}
    assert all(abs(late[step] - logged_at[step]) < 1000 for step in logged_at)  # original time, not the time sent
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_server_never_back_then_runs_sync_pushes_a_complete_run(server, tmp_path, capsys):
    """A whole distillation with the server away from start to end: it trains normally, and `mdist
    runs sync` later sends what it records (params, step metrics, artifacts, status) to the server."""
    run_dir = tmp_path / "run"
    summary = run_distillation(_tiny(3), run_dir)  # nothing listens on the port
    assert summary["steps"] == 3 and summary["mlflow_run_id"] is None
    (journal_path,) = journals(run_dir)
    waiting = len(Journal(journal_path).pending())
    assert waiting > 3
    server.start()
    assert main(["runs", "sync", str(run_dir)]) == 0
    assert f"sent {waiting} record(s)" in capsys.readouterr().out
    run_id = json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"]
    client = _client(server.uri)
    run = client.get_run(run_id)
    params = run.data.params
    assert params["train.steps"] == "3" and params["strategy"] == "monoshot" and params["students.groups.tr"] == "['tr']"
    assert params["run.world_size"] == "1" and params["run.languages"] == "en,tr"
    assert int(params["run.student_parameters"]) > 0 and int(params["run.teacher_parameters"]) > int(params["run.student_parameters"]) // 2
    assert params["run.git_commit"] and params["run.version.torch"] and params["run.version.deepspeed"]
    for key in ("en/en/loss", "tr/tr/att", "en/en/kl", "tr/tr/emb", "lr", "tokens_per_s", "tokens"):
        assert _steps(client, run_id, key) == [0, 1, 2], key
    assert {"summary.json", "run_config.json", "deepspeed_config.json", "students"} <= {a.path for a in client.list_artifacts(run_id)}
    assert {a.path for a in client.list_artifacts(run_id, "students/tr")} == {"students/tr/README.md"}  # a card per student
    assert {a.path for a in client.list_artifacts(run_id, "students/en")} == {"students/en/README.md"}
    assert run.info.status == "FINISHED"
    assert main(["runs", "sync", str(run_dir)]) == 0  # nothing twice
    assert _steps(client, run_id, "lr") == [0, 1, 2]


def test_a_resumed_run_logs_no_step_twice(tmp_path):
    """The same journal after a restart (a killed run resumed from an earlier checkpoint): steps the
    first attempt logged are not logged again, later ones are."""
    first = Tracker(tmp_path, "exp", name="distill")
    first.log_params({"git_commit": "abc"})
    for step in range(6):
        first.log_metrics({"loss": float(step)}, step)
    first.close(status=None)  # a killed process never closes; its records are durable all the same
    resumed = Tracker(tmp_path, "exp", name="distill", run_id=first.run_id)
    resumed.log_params({"git_commit": "def", "new_param": "1"})  # resumed after a code update: the first value stays
    resumed.journal.append({"kind": "params", "params": {"git_commit": "xyz"}})  # a record MLflow refuses ...
    for step in range(3, 9):  # the checkpoint was at step 3
        resumed.log_metrics({"loss": float(step), "late": 1.0}, step)
    assert resumed.close() == 0  # ... is skipped, not a block on everything after it
    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert _steps(client, first.run_id, "loss") == list(range(9))
    assert _steps(client, first.run_id, "late") == list(range(3, 9))
    assert client.get_run(first.run_id).data.params == {"git_commit": "abc", "new_param": "1"}
    assert resumed.journal.state["refused"] == 1


def test_runs_table_with_children_markdown_plot_and_filters(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    summary = run_distillation(_tiny(2), run_dir)
    child = Tracker(run_dir, "mdist-transfer", run_name="xnli", parent_run_id=summary["mlflow_run_id"])
    child.log_params({"strategy": "full-trg"})
    child.log_metrics({"xnli.tr.zero_shot.accuracy": 0.612, "retrieval.tr.bertscore.all": 0.375}, 0)
    child.close()
    assert main(["runs", "--store", str(run_dir), "--out", str(tmp_path / "runs.md"), "--plot", str(tmp_path / "loss.png")]) == 0
    table = (tmp_path / "runs.md").read_text()
    (row,) = [line for line in table.splitlines() if summary["mlflow_run_id"][:8] in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:7] == ["monoshot", "tiny-random", "en:en tr:tr", "2"]
    assert cells[7] == f"{summary['tokens']:,}"
    assert cells[8] == " · ".join(f"{pair} {summary['final_losses'][pair]['loss']:.3f}" for pair in sorted(summary["final_losses"]))
    assert cells[9] == "tr bert .375" and cells[10] == "xnli-tr full-trg .612"
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "(2 curves)" in capsys.readouterr().out
    assert main(["runs", "--store", str(run_dir), "--tag", "mlflow.runName=nothing-like-it"]) == 0
    assert summary["mlflow_run_id"][:8] not in capsys.readouterr().out
