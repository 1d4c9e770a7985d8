"""A real `mlflow server` for tests and benchmarks: its own sqlite store, a free port on 127.0.0.1,
stopped by its pid (tests/test_tracking_server.py, benchmarks/tracking_cost.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MLFLOW = Path(sys.executable).parent / "mlflow"


class Server:
    """`mlflow server` on 127.0.0.1:port with a sqlite store in `root`; start / stop keep port and store.
    `nice`: the server's scheduling niceness (19: it runs in the time the training leaves)."""

    def __init__(self, root: Path, port: int, nice: int = 0):
        self.root, self.port, self.proc, self.nice = root, port, None, nice
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> "Server":
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{self.root / 'store.db'}", "--artifacts-destination",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=(self.root / "server.log").open("ab"), start_new_session=True,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,
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

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers, at once, like a crash
            self.proc.wait(timeout=30)
        self.proc = None
