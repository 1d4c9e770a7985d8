"""The Tracker: one MLflow run, logged from rank 0 without ever stalling or failing a training step.

Store: `MLFLOW_TRACKING_URI` when set (a server, which owns its artifact store), else a sqlite
store at `<run dir>/mlflow.db` with artifacts in `<run dir>/mlartifacts` (MLflow's default would be
`./mlruns` under whatever directory the process happens to run in).

Every record goes to the run's durable journal first (`mdist.tracking.journal`); a background thread
sends it. While the server is away the thread retries with backoff and the journal grows; when it
returns, everything is sent in order with its original step and timestamp. `close` waits a few
seconds for the rest and warns how many records still wait (`mdist runs sync RUN_DIR` sends them).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from mdist.tracking.journal import QUEUE_DIR, Journal
from mdist.tracking.sender import send_pending

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "mlartifacts"  # artifacts of the embedded store, under the run directory
# MLflow's own defaults (120 s timeout, 7 retries with backoff) hold a call for minutes when the
# server is gone; these bound each call to seconds (a user's own settings win).
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
RETRY_MAX_S = 60.0  # the longest pause between two attempts while the server is away
CREATE_WAIT_S = 10.0  # how long a new Tracker waits for its run id (a reachable server answers at once)
CLOSE_WAIT_S = 10.0  # how long close() waits for the last records


def tracking_uri(run_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def artifact_location(run_dir: Path) -> str | None:
    """Artifacts beside the embedded sqlite store; a tracking server decides for itself (None)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (run_dir / ARTIFACTS_DIR).resolve().as_uri()


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-4}} -> {'train.lr': 1e-4}."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


class _Sender(threading.Thread):
    """Sends the journal whenever woken; after a failure retries with backoff (1, 2, 4 … 60 s)."""

    def __init__(self, journal: Journal):
        super().__init__(name="mdist-mlflow-sender", daemon=True)
        self.journal = journal
        self.wake, self.created = threading.Event(), threading.Event()
        self.stopping = False
        self._client = None
        self._failing = False

    def run(self) -> None:
        delay = None
        while True:
            self.wake.wait(timeout=delay)
            self.wake.clear()
            try:
                if self._client is None:
                    self._client = client_for(self.journal.header["uri"])
                send_pending(self._client, self.journal)  # never holds the training thread: appends go on
                self.created.set()
                if self._failing:
                    log.warning("MLflow reachable again: every waiting record was sent")
                self._failing, delay = False, None
            except Exception as err:  # server away, bad URI: keep the records, retry later
                if not self._failing:
                    log.warning("MLflow unreachable (%s: %s); records wait in %s and are sent when it returns", type(err).__name__, err, self.journal.path)
                self._failing, delay = True, min(RETRY_MAX_S, 2 * (delay or 0.5))
            if self.stopping:  # closing: one more pass for records that arrived meanwhile, unless failing
                if self._failing or not self.journal.pending():
                    return
                self.wake.set()


class Tracker:
    """One MLflow run, through a durable journal. Disabled trackers do nothing (no mlflow import)."""

    def __init__(self, run_dir: Path, experiment: str, enabled: bool = True, run_id: str | None = None, run_name: str | None = None,
                 parent_run_id: str | None = None, name: str | None = None, fresh: bool = False):
        """Log to `run_id`, or to a new run (with `parent_run_id`, a child of that run, in its
        experiment: the MLflow UI shows evaluations and fine-tunings under their distillation run).
        `name` keeps the journal across restarts of one run (the distillation run's is "distill";
        `fresh` starts it anew); without it each Tracker has its own."""
        self.journal: Journal | None = None
        if not enabled:
            return
        header = {"uri": tracking_uri(run_dir), "experiment": experiment, "run_name": run_name, "parent_run_id": parent_run_id,
                  "artifact_location": artifact_location(run_dir), "start_time": int(time.time() * 1000)}
        self.journal = Journal.open(run_dir / QUEUE_DIR / f"{name or run_id or uuid.uuid4().hex}.jsonl", header, fresh)
        if run_id is not None and self.journal.run_id is None:
            self.journal.mark(run_id=run_id)
        self._sender = _Sender(self.journal)
        self._sender.start()
        self._sender.wake.set()
        self._sender.created.wait(CREATE_WAIT_S)

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; None while the run could not be created yet (the server is away)."""
        return self.journal.run_id if self.journal else None

    def _queue(self, method: str, *args) -> None:
        if self.journal is None:
            return
        getattr(self.journal, method)(*args)
        self._sender.wake.set()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._queue("log_params", {k: str(v)[:6000] for k, v in flatten(params).items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Metrics of `step`; those this run logged before at this step (a resumed run) are dropped."""
        self._queue("log_metrics", metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._queue("log_artifact", Path(path), artifact_path)

    def close(self, status: str | None = "FINISHED") -> int:
        """Mark the run `status` (None: leave it RUNNING, e.g. pre-empted), send what waits for up to
        CLOSE_WAIT_S, and return how many records still wait in the journal."""
        if self.journal is None:
            return 0
        if status is not None:
            self._queue("append", {"kind": "status", "status": status, "timestamp": int(time.time() * 1000)})
        self._sender.stopping = True
        self._sender.wake.set()
        self._sender.join(CLOSE_WAIT_S)
        waiting = len(self.journal.pending())
        if waiting:
            run_dir = self.journal.path.parent.parent
            log.warning("%d MLflow record(s) wait in %s; send them with: mdist runs sync %s", waiting, self.journal.path, run_dir)
        return waiting
