"""Tracking cost: the training loop's wall time of the tiny recipe untracked, tracked to the embedded
sqlite store, and tracked to a real local `mlflow server` (sqlite store, 127.0.0.1), at log_every 1 and
10. The server: as MLflow starts it (with its job runner: seven `huey` consumers that poll); without the
job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false); and without it at nice 19, as docs/tracking.md
advises for a server beside the training. A server row starts its own server and waits until its
start-up work is done (tests/mlflow_server.py, `settle`); no other server runs beside any row. The last
two modes stand for a machine whose training leaves a core free (a GPU node; a server on another
machine): the run on core 0 with one thread, untracked and tracked to a server (no jobs) on core 1; the
latter's ratios are against the former.

Each run is one `run_distillation` in a fresh process. A round runs every mode once, in an order that
rotates from round to round; a mode's ratio is taken against the baseline of the same round (runs
seconds apart, so that a machine slowing down for minutes moves both), and the table gives the median
ratio over the rounds and its range. "loop s" is the training loop (summary["seconds"]), the measure
of the target: tracked loop within 10 % of untracked; "run s" is the whole call (imports excluded,
mlflow's included: a tracked run pays about a second for it, once), "process cpu s" the CPU time of
the whole child process (all its threads, imports included), "server cpu s" the server's own CPU time
over the run (every process it started). The cached empty sqlite store
(`mdist.tracking.store_template`) is made first, as a user's first tracked run leaves it. Prints a
table and appends it to benchmarks/RESULTS.md.

    python benchmarks/tracking_cost.py [--steps 400] [--log-every 1 10] [--rounds 5] [--modes ...] [--no-record]
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
from dataclasses import dataclass
from pathlib import Path

from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # mlflow_server: the real server the tests use


@dataclass(frozen=True)
class Mode:
    tracking: str  # untracked | sqlite | server
    jobs: bool = False  # the server's job runner (MLflow's default: on)
    nice: int = 0  # the server's nice value
    pinned: bool = False  # one training thread on TRAINING_CORE, the server on SERVER_CORE


MODES = {"untracked": Mode("untracked"), "sqlite": Mode("sqlite"), "server": Mode("server", jobs=True), "server, no jobs": Mode("server"),
         "server, no jobs, nice 19": Mode("server", nice=19), "untracked, 1 core": Mode("untracked", pinned=True),
         "server on the other core": Mode("server", pinned=True)}
TRAINING_CORE, SERVER_CORE = 0, 1
HEADER = ("date (UTC)", "device", "commit", "steps", "log_every", "tracking", "rounds", "run s", "loop s", "process cpu s", "server cpu s",
          "loop ratio", "loop ratio range", "run ratio", "target ≤ 1.10")


def baseline(name: str) -> str:
    return "untracked, 1 core" if MODES[name].pinned else "untracked"


def one_run(steps: int, log_every: int, tracked: bool, out: Path) -> dict:
    """In this process: one tiny-recipe distillation; its wall and loop seconds."""
    from mdist.config import load_run_config
    from mdist.run import run_distillation

    cfg = load_run_config("tiny", [f"train.steps={steps}", f"train.log_every={log_every}",
                                   f"tracking.enabled={str(tracked).lower()}"])
    started = time.perf_counter()
    summary = run_distillation(cfg, out)
    return {"run": time.perf_counter() - started, "loop": summary["seconds"]}


def measure(name: str, steps: int, log_every: int, out: Path) -> dict:
    """One run in a child process; a server mode starts (and stops) its own settled server."""
    from mlflow_server import Server

    from mdist.engine import free_port

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    mode = MODES[name]
    server = None
    if mode.tracking == "server":
        server = Server(out.with_name(out.name + "-server"), free_port(), jobs=mode.jobs, nice=mode.nice).start()
        if mode.pinned:
            for proc in server.processes():
                proc.cpu_affinity([SERVER_CORE])
        server.settle()
        env["MLFLOW_TRACKING_URI"] = server.uri
        server_before = server.cpu_seconds()
    try:
        got = _child_run(mode.tracking, steps, log_every, out, env, mode.pinned)
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


def table_rows(times: dict[str, list[dict]], head: list) -> list[list]:
    """One row per mode: median seconds over the rounds, and the median and range of the per-round ratios."""
    rows = []
    for name, runs in times.items():
        base = times[baseline(name)]
        loop_ratios = [run["loop"] / b["loop"] for run, b in zip(runs, base)]
        run_ratio = statistics.median(run["run"] / b["run"] for run, b in zip(runs, base))
        med = {key: statistics.median(run.get(key, 0.0) for run in runs) for key in ("run", "loop", "cpu", "server")}
        loop_ratio = statistics.median(loop_ratios)
        tracked = MODES[name].tracking != "untracked"
        rows.append([*head, name, len(runs), f"{med['run']:.1f}", f"{med['loop']:.1f}", f"{med['cpu']:.1f}",
                     f"{med['server']:.1f}" if MODES[name].tracking == "server" else "", f"{loop_ratio:.3f}",
                     f"{min(loop_ratios):.3f}–{max(loop_ratios):.3f}" if tracked else "", f"{run_ratio:.3f}",
                     ("met" if loop_ratio <= 1.10 else "missed") if tracked else ""])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--log-every", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each mode; the table gives medians over them")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="modes to run (their baselines are added)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--row", choices=sorted({mode.tracking for mode in MODES.values()}), help=argparse.SUPPRESS)  # one run, in a child process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(one_run(args.steps, args.log_every[0], args.row != "untracked", args.out)))
        return
    from mdist.tracking.store_template import create_store

    names = [name for name in MODES if name in args.modes or name in {baseline(m) for m in args.modes}]
    revision, stamp, device = git_commit(), utc_stamp(), device_name("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        create_store(tmp / "first.db", (tmp / "first-artifacts").as_uri())  # the cache a first tracked run leaves
        print(markdown_header(HEADER), flush=True)
        for log_every in args.log_every:
            times = {name: [] for name in names}
            for round_ in range(args.rounds):
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    out = tmp / f"{name.replace(', ', '-').replace(' ', '-')}-{log_every}-{round_}"
                    times[name].append(measure(name, args.steps, log_every, out))
            for row in table_rows(times, [stamp, device, revision, args.steps, log_every]):
                print(markdown_row(row), flush=True)
                rows.append(row)
    if not args.no_record:
        append_table(f"Tracking cost (benchmarks/tracking_cost.py), {stamp}, tiny recipe, {args.steps} steps, {args.rounds} rounds", HEADER, rows)


if __name__ == "__main__":
    main()
