"""Sending a journal's records to MLflow: the run is created when first reachable, records go in
order and in batches, and each batch is marked sent only once MLflow has taken it. A batch MLflow
refuses as invalid (HTTP 4xx, e.g. a param whose value changed) is skipped with a warning and
counted, so one bad record never holds back the rest; any other failure leaves it to be retried."""
from __future__ import annotations

import logging

from mdist.tracking.journal import Journal

log = logging.getLogger(__name__)

# A batch is one request. MLflow's log_batch takes up to 1000 metrics, but a server on a busy machine
# can need seconds for that many, near the HTTP timeout (HTTP_BOUNDS); half of it stays well inside.
METRICS_PER_BATCH = 500
PARAMS_PER_BATCH = 100  # MLflow's limit


def ensure_run(client, journal: Journal) -> str:
    """The journal's MLflow run, created now (with its original start time) if it does not exist yet."""
    if journal.run_id:
        return journal.run_id
    header = journal.header
    tags = dict(header.get("tags") or {})
    if header.get("parent_run_id"):
        exp_id = client.get_run(header["parent_run_id"]).info.experiment_id
        tags["mlflow.parentRunId"] = header["parent_run_id"]
    else:
        exp = client.get_experiment_by_name(header["experiment"])
        exp_id = exp.experiment_id if exp else client.create_experiment(header["experiment"], artifact_location=header.get("artifact_location"))
    run = client.create_run(exp_id, start_time=header.get("start_time"), run_name=header.get("run_name"), tags=tags)
    journal.mark(run_id=run.info.run_id)
    return run.info.run_id


def _refused(err: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and 400 <= err.get_http_status_code() < 500


def unreachable(err: BaseException | None) -> bool:
    """Whether `err` (or an error it was raised from) says the server could not be reached at all:
    refused, timed out, no route; not an answer refusing the request."""
    import requests

    while err is not None:
        if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        err = err.__cause__ or err.__context__
    return False


def _send(journal: Journal, records: int, call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except Exception as err:
        if not _refused(err):
            raise
        journal.state["refused"] = journal.state.get("refused", 0) + records
        log.warning("MLflow refused %d record(s) of %s, skipped: %s", records, journal.path, str(err).splitlines()[0])


def send_pending(client, journal: Journal) -> int:
    """Send every unsent record; returns how many. A failure raises with what was sent kept as sent."""
    from mlflow.entities import Metric, Param

    run_id = ensure_run(client, journal)
    pending = journal.pending()
    i = 0
    while i < len(pending):
        seq, record = pending[i]
        kind = record["kind"]
        if kind == "metrics":
            metrics, j = [], i
            while j < len(pending) and pending[j][1]["kind"] == "metrics":  # whole records, up to a batch
                r = pending[j][1]
                if metrics and len(metrics) + len(r["metrics"]) > METRICS_PER_BATCH:
                    break
                metrics += [Metric(k, v, r["timestamp"], r["step"]) for k, v in r["metrics"].items()]
                j += 1
            for start in range(0, len(metrics), METRICS_PER_BATCH):  # only a record larger than a batch is split
                _send(journal, j - i, client.log_batch, run_id, metrics=metrics[start : start + METRICS_PER_BATCH])
        else:
            j = i + 1
            if kind == "params":
                items = [Param(k, str(v)[:6000]) for k, v in record["params"].items()]
                for start in range(0, len(items), PARAMS_PER_BATCH):
                    _send(journal, 1, client.log_batch, run_id, params=items[start : start + PARAMS_PER_BATCH])
            elif kind == "artifact":
                _send(journal, 1, client.log_artifact, run_id, record["path"], record.get("artifact_path"))
            elif kind == "status":
                _send(journal, 1, client.set_terminated, run_id, record["status"], end_time=record["timestamp"])
        journal.mark(sent=pending[j - 1][0] + 1)
        i = j
    return len(pending)
