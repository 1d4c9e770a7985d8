"""Per-stage state records (`<out>/stages/<stage>.json`): what `status` shows and what a re-run skips.

A record holds the state (submitted, running, done, failed), the command it ran, start and end times,
exit code, log path, attempts and, where it applies, the process id and host or the SLURM job id.
A stage counts as done only if its record says so for the same command and its output file exists;
a record left `running` by a process that no longer exists (killed with the machine or the runner)
or by a SLURM job that has left the queue counts as failed.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import datetime
from pathlib import Path

from mdist.study.stages import Stage

PENDING, SUBMITTED, RUNNING, DONE, FAILED = "pending", "submitted", "running", "done", "failed"


def record_path(out: Path, name: str) -> Path:
    return out / "stages" / f"{name}.json"


def log_path(out: Path, name: str) -> Path:
    return out / "logs" / f"{name}.log"


def read_record(out: Path, name: str) -> dict | None:
    path = record_path(out, name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a record cut short by a crash: the stage runs again


def write_record(out: Path, name: str, record: dict) -> None:
    """Replace the record atomically: `status` never reads half of one."""
    path = record_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def now() -> str:
    """Local time with milliseconds and offset: records of one study compare as strings."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def state_of(out: Path, stage: Stage, queued: set[str] | None = None) -> tuple[str, dict]:
    """The stage's state and record. `queued`: the SLURM job ids still in the queue (None: not asked)."""
    record = read_record(out, stage.name)
    if record is None or record.get("argv") != stage.argv:
        return PENDING, record or {}
    state = record["state"]
    if state == DONE and not Path(stage.output).exists():
        return PENDING, record  # its output was removed: it runs again
    if state == RUNNING and record.get("host") == socket.gethostname() and record.get("pid") and not _alive(record["pid"]):
        return FAILED, {**record, "why": "its process is gone (killed?)"}
    if state in (SUBMITTED, RUNNING) and record.get("job_id") and queued is not None and array_job(record["job_id"]) not in queued:
        return FAILED, {**record, "why": f"SLURM job {record['job_id']} left the queue without finishing the stage"}
    return state, record


def array_job(job_id: str) -> str:
    """The job id SLURM queues a job under: an array task's (`1234_5`) is its array's (`1234`)."""
    return job_id.split("_")[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def slurm_queue(env: dict | None = None) -> set[str] | None:
    """Job ids in the SLURM queue (array tasks by their array job id); None where there is no SLURM."""
    try:
        proc = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, env=env, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return set(proc.stdout.split()) if proc.returncode == 0 else None


def status_table(out: Path, stages: list[Stage], queued: set[str] | None) -> tuple[str, dict[str, int]]:
    """A Markdown table, one row per stage, and the count of stages per state."""
    rows, counts = [], {}
    for stage in stages:
        state, record = state_of(out, stage, queued)
        counts[state] = counts.get(state, 0) + 1
        shown = f"{state} ({record['why']})" if state == FAILED and record.get("why") else state
        if state == FAILED and record.get("exit_code") is not None:
            shown += f", exit {record['exit_code']}"
        job = record.get("job_id") or (f"pid {record['pid']}" if record.get("pid") else "")
        log = record.get("log", "") if state != PENDING else ""
        rows.append(f"| {stage.name} | {shown} | {record.get('start', '') if state != PENDING else ''} | "
                    f"{record.get('end', '') if state in (DONE, FAILED) else ''} | {job} | {log} |")
    header = "| stage | state | start | end | job | log |\n|---|---|---|---|---|---|"
    return "\n".join([header, *rows]) + "\n", counts
