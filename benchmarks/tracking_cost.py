"""Tracking cost: wall time of the tiny recipe untracked, tracked to the embedded sqlite store, and
tracked to a real local `mlflow server` (sqlite store, 127.0.0.1), at log_every 1 and 10; the server
once as MLflow starts it by default (with its job runner: seven `huey` consumers that poll) and once
with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, as docs/tracking.md advises for a server on the training
machine. A server row starts its own server and waits until its start-up work is done (tests/mlflow_server.py,
`settle`); no other server runs beside any row. The last two modes stand for a machine whose training leaves
a core free (a GPU node; a server on another machine): the run on core 0 with one thread, untracked and
tracked to a server (no jobs) on core 1; the latter's ratio is against the former.

Each row is one `run_distillation` in a fresh process (imports excluded, mlflow's included: a tracked
run pays for it); "run s" is the whole call (store and run created, params, artifacts, close), "loop s"
the training loop alone (summary["seconds"]), "process cpu s" the CPU time of the whole child process
(all its threads, imports included; the server's own is not in it), the figure least moved by other
jobs on a shared machine; "server cpu s" the server's own CPU time over the run (every process it started). Ratios are against the untracked run of the same
log_every in the same invocation; with --repeats N each row is the median of N rounds, the modes
interleaved so that load from other jobs falls on all of them. The cached empty sqlite store
(`mdist.tracking.store_template`) is made first, as a user's first tracked run leaves it. Target:
tracked run within 10 % of untracked. Prints a table and appends it to benchmarks/RESULTS.md.

    python benchmarks/tracking_cost.py [--steps 400] [--log-every 1 10] [--repeats 1] [--no-record]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # mlflow_server: the real server the tests use
# mode: (tracking, pinned: one training thread on TRAINING_CORE, a server on SERVER_CORE), ratios against its baseline
MODES = {"untracked": ("untracked", False), "sqlite": ("sqlite", False), "server": ("server", False), "server, no jobs": ("server", False),
         "untracked, 1 core": ("untracked", True), "server on the other core": ("server", True)}
TRAINING_CORE, SERVER_CORE = 0, 1


def baseline(mode: str) -> str:
    return "untracked, 1 core" if MODES[mode][1] else "untracked"
HEADER = ("date (UTC)", "device", "commit", "steps", "log_every", "tracking", "run s", "loop s", "process cpu s", "server cpu s", "run ratio",
          "loop ratio", "cpu ratio", "target ≤ 1.10")


def one_run(steps: int, log_every: int, tracked: bool, out: Path) -> dict:
    """In this process: one tiny-recipe distillation; its wall and loop seconds."""
    from mdist.config import load_run_config
    from mdist.run import run_distillation

    cfg = load_run_config("tiny", [f"train.steps={steps}", f"train.log_every={log_every}",
                                   f"tracking.enabled={str(tracked).lower()}"])
    started = time.perf_counter()
    summary = run_distillation(cfg, out)
    return {"run": time.perf_counter() - started, "loop": summary["seconds"]}


def measure(mode: str, steps: int, log_every: int, out: Path) -> dict:
    """One row's run in a child process; a server mode starts (and stops) its own settled server."""
    from mlflow_server import Server

    from mdist.engine import free_port

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    tracking, pinned = MODES[mode]
    server = Server(out.with_name(out.name + "-server"), free_port(), jobs=mode == "server").start() if tracking == "server" else None
    if server is not None:
        if pinned:
            for proc in server.processes():
                proc.cpu_affinity([SERVER_CORE])
        server.settle()
        env["MLFLOW_TRACKING_URI"] = server.uri
        server_before = server.cpu_seconds()
    try:
        got = _child_run(tracking, steps, log_every, out, env, pinned)
        if server is not None:
            got["server"] = server.cpu_seconds() - server_before
    finally:
        if server is not None:
            server.stop()
    return got


def _child_run(tracking: str, steps: int, log_every: int, out: Path, env: dict[str, str], pinned: bool) -> dict:
    args = [sys.executable, __file__, "--row", tracking, "--steps", str(steps), "--log-every", str(log_every), "--out", str(out)]
    if pinned:  # one training thread on its own core
        args, env = ["taskset", "-c", str(TRAINING_CORE), *args], {**env, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=out.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{tracking} log_every={log_every} failed:\n{done.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # the whole process, imports too
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "cpu": cpu}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--log-every", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=1, help="rounds per row (the median is reported)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--row", choices=sorted({tracking for tracking, _ in MODES.values()}), help=argparse.SUPPRESS)  # one run, in a child process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(one_run(args.steps, args.log_every[0], args.row != "untracked", args.out)))
        return
    from mdist.tracking.store_template import create_store

    revision, stamp, device = git_commit(), utc_stamp(), device_name("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        create_store(tmp / "first.db", (tmp / "first-artifacts").as_uri())  # the cache a first tracked run leaves
        print(markdown_header(HEADER), flush=True)
        for log_every in args.log_every:
            times = {mode: [] for mode in MODES}
            for round_ in range(args.repeats):
                for mode in MODES:
                    times[mode].append(measure(mode, args.steps, log_every, tmp / f"{mode.replace(', ', '-').replace(' ', '-')}-{log_every}-{round_}"))
            med = {mode: {key: statistics.median(t.get(key, 0.0) for t in times[mode]) for key in ("run", "loop", "cpu", "server")} for mode in MODES}
            for mode in MODES:
                got, base = med[mode], med[baseline(mode)]
                ratio = got["run"] / base["run"]
                row = [stamp, device, revision, args.steps, log_every, mode, f"{got['run']:.1f}", f"{got['loop']:.1f}", f"{got['cpu']:.1f}",
                       f"{got['server']:.1f}" if MODES[mode][0] == "server" else "", f"{ratio:.3f}", f"{got['loop'] / base['loop']:.3f}",
                       f"{got['cpu'] / base['cpu']:.3f}", "" if MODES[mode][0] == "untracked" else ("met" if ratio <= 1.10 else "missed")]
                print(markdown_row(row), flush=True)
                rows.append(row)
    if not args.no_record:
        rounds = f", median of {args.repeats} rounds" if args.repeats > 1 else ""
        append_table(f"Tracking cost (benchmarks/tracking_cost.py), {stamp}, tiny recipe, {args.steps} steps{rounds}", HEADER, rows)


if __name__ == "__main__":
    main()
