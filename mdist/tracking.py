"""MLflow tracking. Only rank 0 logs; an unreachable tracking server never kills a run.

Store: `MLFLOW_TRACKING_URI` when set (a server, which owns its artifact store), else a sqlite
store at `<run dir>/mlflow.db` with artifacts in `<run dir>/mlartifacts` (MLflow's default would be
`./mlruns` under whatever directory the process happens to run in).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "mlartifacts"  # artifacts of the embedded store, under the run directory
# MLflow's own defaults (120 s timeout, 7 retries with backoff) stall a step for minutes when the
# server is gone; these bound each call to seconds (a user's own settings win).
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
QUIET_AFTER_FAILURE_S = 60.0  # after a failed call, skip calls this long: a dead server costs one timeout a minute


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


class Tracker:
    """A thin, failure-tolerant wrapper over one MLflow run. Disabled trackers do nothing."""

    def __init__(self, run_dir: Path, experiment: str, enabled: bool = True, run_id: str | None = None, run_name: str | None = None,
                 parent_run_id: str | None = None):
        """Log to `run_id`, or to a new run; with `parent_run_id` the new run is a child of that run,
        in its experiment (the MLflow UI shows evaluations and fine-tunings under their distillation run)."""
        self.run_id: str | None = None
        self._client = None
        self._quiet_until = 0.0
        if not enabled:
            return
        for name, value in HTTP_BOUNDS.items():
            os.environ.setdefault(name, value)
        try:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=tracking_uri(run_dir))
            if run_id is None:
                tags = {}
                if parent_run_id is not None:
                    exp_id = self._client.get_run(parent_run_id).info.experiment_id
                    tags = {"mlflow.parentRunId": parent_run_id, "mdist.distillation_run_id": parent_run_id}
                else:
                    exp = self._client.get_experiment_by_name(experiment)
                    exp_id = exp.experiment_id if exp else self._client.create_experiment(experiment, artifact_location=artifact_location(run_dir))
                run_id = self._client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
            self.run_id = run_id
        except Exception as err:  # server down, bad URI: warn, train on
            log.warning("MLflow tracking disabled: %s: %s", type(err).__name__, err)
            self._client = None

    def _safe(self, method: str, *args, **kwargs) -> None:
        if self._client is None or time.monotonic() < self._quiet_until:
            return
        try:
            getattr(self._client, method)(self.run_id, *args, **kwargs)
        except Exception as err:
            self._quiet_until = time.monotonic() + QUIET_AFTER_FAILURE_S
            log.warning("MLflow %s failed (run continues; no MLflow calls for %.0f s): %s: %s", method, QUIET_AFTER_FAILURE_S, type(err).__name__, err)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self._client is None:  # tracking off: mlflow is not needed at all
            return
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            self._safe("log_batch", params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._safe("log_batch", metrics=items)

    def log_artifact(self, path: Path) -> None:
        self._safe("log_artifact", str(path))

    def close(self, status: str = "FINISHED") -> None:
        self._safe("set_terminated", status)
