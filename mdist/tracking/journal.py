"""A durable, append-only queue of one MLflow run's records, kept in the run directory.

Every param, metric and artifact is written here first (one JSON line each, metrics with their
original step and timestamp) and sent to MLflow from this file, so nothing is lost while the
tracking server is away: what is unsent at the end stays for `mdist runs sync RUN_DIR`. The file
also remembers which (metric, step) pairs this run ever logged, so a resumed run (`--resume`, a
SLURM requeue) that recomputes steps after its last checkpoint logs none of them twice.

Files in `<run dir>/mlflow-queue/`: `<name>.jsonl` (the first line is the run's header: tracking
URI, experiment, run name, tags), `<name>.state.json` (the MLflow run id once created, and how many
records were sent), `<name>-artifacts/<seq>/<file>` (artifact copies, taken when logged).
No mlflow import here: tracking off, or a machine without mlflow, never needs it.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Mapping

QUEUE_DIR = "mlflow-queue"


class Journal:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()  # the training thread appends while the sender reads
        self.state_path = path.with_suffix(".state.json")
        self.artifacts = path.parent / f"{path.stem}-artifacts"
        self.records: list[dict] = []
        self._repair()
        for line in path.read_text(encoding="utf-8").splitlines():
            self.records.append(json.loads(line))
        self.state = json.loads(self.state_path.read_text(encoding="utf-8")) if self.state_path.is_file() else {"run_id": None, "sent": 1}
        self.last_step: dict[str, int] = {}
        self.params: dict[str, str] = {}
        for record in self.records:
            self._note(record)

    @classmethod
    def open(cls, path: Path, header: Mapping[str, Any], fresh: bool = False) -> "Journal":
        """The journal at `path`, created with `header` if absent; `fresh` sets an earlier one aside
        (renamed with a timestamp, still pushed by `mdist runs sync`) and starts anew."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and path.exists():
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for old in (path, path.with_suffix(".state.json"), path.parent / f"{path.stem}-artifacts"):
                if old.exists():
                    old.rename(old.with_name(old.name.replace(path.stem, f"{path.stem}-{stamp}", 1)))
        if not path.exists():
            path.write_text(json.dumps({"kind": "run", **header}) + "\n", encoding="utf-8")
        return cls(path)

    def _repair(self) -> None:
        """Drop a last line cut short by a kill mid-write, so appends start on a fresh line."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _note(self, record: dict) -> None:
        if record["kind"] == "metrics":
            for key in record["metrics"]:
                self.last_step[key] = max(self.last_step.get(key, -1), record["step"])
        elif record["kind"] == "params":
            self.params.update(record["params"])

    @property
    def header(self) -> dict:
        return self.records[0]

    @property
    def run_id(self) -> str | None:
        return self.state["run_id"]

    def append(self, record: dict) -> None:
        """Write one record durably (a single append; it survives the process being killed)."""
        line = (json.dumps(record) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self.records.append(record)
            self._note(record)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Queue params this run has not logged yet; MLflow params are written once, so a resumed run
        (perhaps after a code update: another git commit) keeps the values it started with."""
        new = {k: v for k, v in params.items() if k not in self.params}
        if new:
            self.append({"kind": "params", "params": new})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue the metrics of `step` that this run has not logged before (a resumed run's repeats)."""
        new = {k: float(v) for k, v in metrics.items() if step > self.last_step.get(k, -1)}
        if new:
            self.append({"kind": "metrics", "step": step, "timestamp": int(time.time() * 1000), "metrics": new})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Queue a copy of `path` (taken now), to go under `artifact_path` in the run's artifacts."""
        seq = len(self.records)
        copy = self.artifacts / str(seq) / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
        self.append({"kind": "artifact", "path": str(copy), "artifact_path": artifact_path})

    def pending(self) -> list[tuple[int, dict]]:
        """(sequence number, record) of every record not yet sent, in order."""
        with self._lock:
            sent = self.state["sent"]
            return list(enumerate(self.records[sent:], start=sent))

    def mark(self, run_id: str | None = None, sent: int | None = None) -> None:
        """Record the run id and / or that records before `sent` reached MLflow (atomic replace)."""
        if run_id is not None:
            self.state["run_id"] = run_id
        if sent is not None:
            self.state["sent"] = sent
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state), encoding="utf-8")
        tmp.replace(self.state_path)


def journals(run_dir: Path) -> list[Path]:
    return sorted((run_dir / QUEUE_DIR).glob("*.jsonl"))
