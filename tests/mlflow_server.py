"""A real `mlflow server` for tests and benchmarks: its own sqlite store, a free port on 127.0.0.1,
stopped by its pid (tests/test_tracking_server.py, benchmarks/tracking_cost.py).

MLflow 3 servers also start a job runner with seven `huey` consumers by default (for its GenAI
features, which mdist does not use): about 14 s of CPU in their first seconds, then about 2.5 % of
a core polling; `jobs=False` starts the server without them (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false).
`nice` starts it as `nice -n N mlflow server` would from the caller's shell: in the caller's session
(its own process group, so that `stop` can kill it whole), since with the kernel's autogroup
scheduling a nice value only ranks processes of one session against each other."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

MLFLOW = Path(sys.executable).parent / "mlflow"


class Server:
    """`mlflow server` on 127.0.0.1:port with a sqlite store in `root`; start / stop keep port and store.
    `jobs`: whether it runs MLflow's job runner (MLflow's default: yes); `nice`: its nice value."""

    def __init__(self, root: Path, port: int, jobs: bool = False, nice: int = 0):
        self.root, self.port, self.proc, self.jobs, self.nice = root, port, None, jobs, nice
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> "Server":
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["nice", "-n", str(self.nice), str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.root / 'store.db'}", "--artifacts-destination",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=(self.root / "server.log").open("ab"), process_group=0,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(self.jobs).lower()},
        )
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def processes(self) -> list[psutil.Process]:
        """The server and every process it started (uvicorn workers, job runner)."""
        return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and every process it started."""
        total = 0.0
        for proc in self.processes():
            try:
                total += sum(proc.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    def settle(self, window_s: float = 2.0, busy: float = 0.1, limit_s: float = 120.0) -> float:
        """Wait until the server uses under `busy` of a core over `window_s` (its start-up work done:
        imports of the job runner's consumers); returns its CPU share over the last window."""
        deadline = time.time() + limit_s
        while True:
            before = self.cpu_seconds()
            time.sleep(window_s)
            share = (self.cpu_seconds() - before) / window_s
            if share < busy or time.time() > deadline:
                return share

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers, at once, like a crash
            self.proc.wait(timeout=30)
        self.proc = None
