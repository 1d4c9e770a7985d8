"""The Tracker: one MLflow run, logged from rank 0 without ever stalling or failing a training step.

Store: `MLFLOW_TRACKING_URI` when set (a server, which owns its artifact store), else a sqlite
store at `<run dir>/mlflow.db` with artifacts in `<run dir>/mlartifacts` (MLflow's default would be
`./mlruns` under whatever directory the process happens to run in).

Every record goes to the run's durable journal first (`mdist.tracking.journal`); a background thread
sends what has gathered, in batches, about once a second. While the server is away the thread
retries with backoff (at most RETRY_MAX_S apart) and the journal grows; when it returns, everything
is sent in order with its original step and timestamp. `close` sends the rest at once, waits while
it goes through, and warns how many records still wait (`mdist runs sync RUN_DIR` sends them).
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
from mdist.tracking.store_template import create_store

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "mlartifacts"  # artifacts of the embedded store, under the run directory
SQLITE_PREFIX = "sqlite:///"
# MLflow's own defaults (120 s timeout, 7 retries with backoff) hold a call for minutes when the
# server is gone; these bound each call to seconds (a user's own settings win).
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
FLUSH_S = 1.0  # records go to MLflow at most this often, in batches (one request, not one per step)
RETRY_MAX_S = 4.0  # the longest pause between two attempts while the server is away: a returning server is noticed within seconds
CREATE_WAIT_S = 10.0  # how long a new Tracker waits for its run id (a reachable server answers at once)
CLOSE_WAIT_S = 10.0  # how long close() waits for the sender to make progress on the last records


# Set by `mdist study` for its stages: every stage's run goes to the study's store and experiment, tagged.
STUDY, STUDY_DIR, STUDY_STAGE = "MDIST_STUDY", "MDIST_STUDY_DIR", "MDIST_STUDY_STAGE"


def _store_dir(run_dir: Path) -> Path:
    """The directory whose embedded store a run logs to: its own, or, in a study, the study's."""
    return Path(os.environ[STUDY_DIR]) if os.environ.get(STUDY_DIR) else run_dir


def tracking_uri(run_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"{SQLITE_PREFIX}{(_store_dir(run_dir) / 'mlflow.db').resolve()}"


def artifact_location(run_dir: Path) -> str | None:
    """Artifacts beside the embedded sqlite store; a tracking server decides for itself (None)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (_store_dir(run_dir) / ARTIFACTS_DIR).resolve().as_uri()


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


def _client_for_journal(header: Mapping[str, Any]):
    """A client for the journal's store; the run directory's own sqlite store (the one with an
    artifact location of ours) is created from the cached empty store when absent."""
    uri, artifacts = header["uri"], header.get("artifact_location")
    if artifacts and uri.startswith(SQLITE_PREFIX) and not Path(uri[len(SQLITE_PREFIX):]).exists():
        create_store(Path(uri[len(SQLITE_PREFIX):]), artifacts)
    return client_for(uri)


class _Sender(threading.Thread):
    """Sends the journal's new records in batches, at most every FLUSH_S, so a step's records cost
    the training thread one journal append; after a failure it retries with backoff (1, 2, 4 s, then
    every RETRY_MAX_S) whether or not new records arrive. `hurry` (close) skips any pause."""

    def __init__(self, journal: Journal):
        super().__init__(name="mdist-mlflow-sender", daemon=True)
        self.journal = journal
        self.wake, self.hurry, self.created = threading.Event(), threading.Event(), threading.Event()
        self.stopping = False
        self._client = None
        self._failing = False

    def run(self) -> None:
        pause, last = 0.0, float("-inf")
        while True:
            self.wake.wait()
            remaining = last + pause - time.monotonic()
            if remaining > 0:
                self.hurry.wait(remaining)
            self.wake.clear()
            final = self.stopping  # this attempt began after close(): its outcome is the last word
            last = time.monotonic()
            try:
                if self._client is None:
                    self._client = _client_for_journal(self.journal.header)
                send_pending(self._client, self.journal)  # never holds the training thread: appends go on
                self.created.set()
                if self._failing:
                    log.warning("MLflow reachable again: every waiting record was sent")
                self._failing, pause = False, FLUSH_S
            except Exception as err:  # server away, bad URI: keep the records, retry later
                if not self._failing:
                    log.warning("MLflow unreachable (%s: %s); records wait in %s and are sent when it returns", type(err).__name__, err, self.journal.path)
                pause = min(RETRY_MAX_S, 2 * pause) if self._failing else 1.0
                self._failing = True
                self.wake.set()  # try again after the pause, new records or not
            if self.stopping:  # closing: passes at once until nothing waits, or one made after close() failed
                if (self._failing and final) or not self.journal.pending():
                    return
                self.wake.set()


class Tracker:
    """One MLflow run, through a durable journal. Disabled trackers do nothing (no mlflow import)."""

    def __init__(self, run_dir: Path, experiment: str, enabled: bool = True, run_id: str | None = None, run_name: str | None = None,
                 parent_run_id: str | None = None, name: str | None = None, fresh: bool = False, parent_kind: str = "distillation"):
        """Log to `run_id`, or to a new run (with `parent_run_id`, a child of that run, in its
        experiment: the MLflow UI shows evaluations and fine-tunings under their distillation run,
        a sweep's distillations under the sweep; tagged `mdist.<parent_kind>_run_id`).
        `name` keeps the journal across restarts of one run (the distillation run's is "distill";
        `fresh` starts it anew); without it each Tracker has its own."""
        self.journal: Journal | None = None
        if not enabled:
            return
        study = os.environ.get(STUDY)
        tags = {"mdist.study": study, "mdist.stage": os.environ.get(STUDY_STAGE, "")} if study else {}
        if parent_run_id:
            tags[f"mdist.{parent_kind}_run_id"] = parent_run_id
        header = {"uri": tracking_uri(run_dir), "experiment": study or experiment, "run_name": run_name, "parent_run_id": parent_run_id,
                  "artifact_location": artifact_location(run_dir), "start_time": int(time.time() * 1000), "tags": tags}
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
        """Mark the run `status` (None: leave it RUNNING, e.g. pre-empted), send what waits at once
        (waiting while batches go through, up to CLOSE_WAIT_S without progress; one failed attempt
        ends it), and return how many records still wait in the journal."""
        if self.journal is None:
            return 0
        if status is not None:
            self._queue("append", {"kind": "status", "status": status, "timestamp": int(time.time() * 1000)})
        self._sender.stopping = True
        self._sender.hurry.set()  # send at once: no flush interval, no backoff
        self._sender.wake.set()
        sent = None
        while self._sender.is_alive() and self.journal.state["sent"] != sent:  # a large backlog: wait while it drains
            sent = self.journal.state["sent"]
            self._sender.join(CLOSE_WAIT_S)
        waiting = len(self.journal.pending())
        if waiting:
            run_dir = self.journal.path.parent.parent
            log.warning("%d MLflow record(s) wait in %s; send them with: mdist runs sync %s", waiting, self.journal.path, run_dir)
        return waiting
