"""mdist across nodes: a 2-node SLURM cluster on this machine (tests/slurm_cluster.py), each node a
network namespace with its own address on a bridge and no loopback address, so a rank that tried
127.0.0.1 would fail; all tests share one cluster.

- the ranks of a plain `srun` meet on the first node of the node list, and every TCP connection they
  hold is between bridge addresses (gloo pinned to the nodes' interface by GLOO_SOCKET_IFNAME);
- `slurm/distill.sbatch` with each launcher (srun, the DeepSpeed launcher, torchrun with a c10d
  rendezvous) trains the tiny recipe on 2 nodes × 1 rank to students byte-identical to 2 ranks on
  one node (the same global batch);
- with shard data, the ranks of different nodes read disjoint shards;
- pre-emption under each launcher: USR1 to the batch step checkpoints on both nodes, requeues, resumes,
  same students, and no launcher dies of the signal;
- a node lost mid-run (every process of it killed, slurmd included): the job fails within seconds
  naming the lost rank, SLURM requeues it, it resumes on the node once back and ends with the same
  students, one MLflow run with every step once.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdist.engine import free_port
from slurm_cluster import LocalSlurm

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
SETTINGS = ["--set", f"train.steps={STEPS}", "--set", "train.save_every=2", "--set", "dist.timeout_s=30"]
TASKS = ["--nodes", "2", "--ntasks-per-node", "1", "--cpus-per-task", "1"]  # 1 rank per node: world 2


@pytest.fixture(scope="module")
def cluster(slurm_cluster) -> LocalSlurm:
    return slurm_cluster(2)


def _env(cluster: LocalSlurm, **extra: str) -> dict:
    """A user's shell on a cluster (gloo pinned to the nodes' interface by user_env: README, 'Several nodes')."""
    return {**cluster.user_env(), **extra}


def _distill(cluster: LocalSlurm, out: Path, *sets: str, launcher: str = "srun") -> str:
    """Submit slurm/distill.sbatch (the tiny recipe) on 2 nodes; its job id. The log is OUT.log."""
    return cluster.sbatch("--output", f"{out}.log", *TASKS, "slurm/distill.sbatch", "tiny", str(out), *SETTINGS, *sets,
                          env=_env(cluster, LAUNCHER=launcher), cwd=ROOT)


def _students(out: Path) -> dict[str, str]:
    """Each exported student's sha256: equal digests, equal bytes (and a short message when they differ)."""
    return {name: hashlib.sha256((out / "students" / name / "model.safetensors").read_bytes()).hexdigest() for name in ("en", "tr")}


def _log(out: Path) -> str:
    return Path(f"{out}.log").read_text()


@pytest.fixture(scope="module")
def one_node(cluster, tmp_path_factory) -> dict[str, str]:
    """The reference: 2 ranks on one node (torchrun on this machine, over its loopback), same global batch."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "mdist", "distill", "--recipe", "tiny", "--out", str(out), *SETTINGS]
    proc = subprocess.run(cmd, cwd=ROOT, env={**cluster.user_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return _students(out)


def test_multinode_srun_ranks_meet_on_the_first_node_over_the_bridge(cluster, tmp_path):
    """Plain srun, no MASTER_ADDR given: mdist takes the node list's first host. Every connection of
    every rank (the store's, gloo's) joins two bridge addresses, one rank per node."""
    reports = tmp_path / "reports"
    reports.mkdir()
    proc = subprocess.run(["srun", *TASKS, sys.executable, str(ROOT / "tests" / "rank_probe.py"), str(reports)],
                          env=_env(cluster), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    seen = [json.loads(path.read_text()) for path in sorted(reports.iterdir())]
    first, second = cluster.nodes
    assert [(r["rank"], r["world"], r["local_rank"], r["host"]) for r in seen] == [(0, 2, 0, first.name), (1, 2, 0, second.name)]
    assert {(r["master"], r["master_ip"]) for r in seen} == {(first.name, first.address)}
    bridge = {node.address for node in cluster.nodes}
    for r in seen:
        assert r["connections"] and all(local in bridge and remote in bridge for local, remote in r["connections"]), r
    assert [first.address, second.address] in seen[1]["connections"] or [second.address, first.address] in seen[1]["connections"]


@pytest.mark.parametrize("launcher", ["srun", "deepspeed", "torchrun"])
def test_multinode_launcher_trains_the_one_node_students(launcher, cluster, one_node, tmp_path):
    out = tmp_path / "run"
    job = cluster.wait(_distill(cluster, out, launcher=launcher), timeout=300)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "0"), _log(out)[-4000:]
    nodes = f"n[1-{len(cluster.nodes)}]"
    assert f"2 task(s) on {nodes}, launcher {launcher}, rendezvous n1" in _log(out) and json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert _students(out) == one_node


def test_multinode_ranks_of_different_nodes_read_disjoint_shards(cluster, recipe_teacher_dir, tmp_path):
    """4 shards per language, one rank on each node: each rank opens shards, none opened by both."""
    from mdist.data.prep import ShardLimits, prepare
    from mdist.data.synthetic import SyntheticCorpus

    corpus, shards = SyntheticCorpus(seed=0), tmp_path / "shards"
    for lang in ("en", "tr"):
        (tmp_path / f"{lang}.txt").write_text("".join(doc + "\n\n" for doc in corpus.monolingual(lang, documents=40)))
        prepare(lang, [tmp_path / f"{lang}.txt"], shards, ShardLimits(max_documents=10), progress=False)
    every_shard = {str(path) for path in shards.glob("*.tar")}
    assert len(every_shard) == 8
    reports = tmp_path / "opened"
    reports.mkdir()
    cmd = ["srun", *TASKS, sys.executable, str(ROOT / "tests" / "opened_shards.py"), str(reports), "distill", "--recipe", "tiny",
           "--out", str(tmp_path / "run"), "--set", "train.steps=2", "--set", f"teacher.path={recipe_teacher_dir}",
           "--set", "data.kind=shards", "--set", f"data.shards={shards}", "--set", "data.num_workers=0"]
    proc = subprocess.run(cmd, env=_env(cluster), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    opened = {path.stem: set(json.loads(path.read_text())) for path in reports.iterdir()}
    assert sorted(opened) == [f"{node.name}-{rank}" for rank, node in enumerate(cluster.nodes)]
    first, second = opened.values()
    assert first and second and first <= every_shard and second <= every_shard, opened
    assert not first & second, f"both nodes' ranks read {sorted(first & second)}"


def _wait_for_checkpoint(cluster: LocalSlurm, job_id: str, out: Path) -> None:
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "latest").is_file():  # mid-run: after the first checkpoint
        assert cluster.job(job_id)["JobState"] in ("PENDING", "RUNNING"), _log(out)[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)


def _one_mlflow_run_with_every_step_once(out: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs(["0", "1"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "lr")) == list(range(STEPS))


@pytest.mark.parametrize("launcher", ["srun", "deepspeed", "torchrun"])
def test_multinode_preempted_job_checkpoints_on_both_nodes_requeues_and_ends_with_the_same_students(launcher, cluster, one_node, tmp_path):
    out = tmp_path / "run"
    job_id = _distill(cluster, out, launcher=launcher)
    _wait_for_checkpoint(cluster, job_id, out)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=cluster.env, check=True)

    job = cluster.wait(job_id, timeout=300)
    text = _log(out)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), text[-4000:]
    assert text.count("stopped by signal") == 2 and "requeueing job" in text, text[-4000:]  # each node's rank saved
    assert "User defined signal 1" not in text, text[-4000:]  # no launcher died of it before its ranks had saved
    assert "resuming from" in text.split("(restart 1)")[1], "the requeued job did not resume"
    assert _students(out) == one_node
    _one_mlflow_run_with_every_step_once(out)


def test_multinode_lost_node_fails_the_job_fast_and_it_resumes_once_the_node_is_back(cluster, one_node, tmp_path):
    """Every process of node 2 killed (slurmd, step daemon, rank) after the first checkpoint: rank 0
    stops within seconds naming rank 1; SLURM declares the node down (SlurmdTimeout) and requeues the
    job; with node 2 back it resumes from the newest complete checkpoint."""
    out = tmp_path / "run"
    job_id = _distill(cluster, out)
    _wait_for_checkpoint(cluster, job_id, out)
    lost = cluster.nodes[1]
    killed_at = time.monotonic()
    assert cluster.kill_node(lost)
    deadline = killed_at + 120
    while cluster.job(job_id)["JobState"] == "RUNNING":
        assert time.monotonic() < deadline, f"the job still runs 120 s after node {lost.name} was lost"
        time.sleep(0.2)
    noticed = time.monotonic() - killed_at
    cluster.start_node(lost)
    cluster.wait_until_idle()

    job = cluster.wait(job_id, timeout=300)
    text = _log(out)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), text[-4000:]
    assert noticed < 60, noticed  # SlurmdTimeout (10 s) + SLURM's ping interval, then NODE_FAIL
    stopped = re.search(rf"mdist distill: error: rank 0: (rank\(s\) 1 left before the barrier '[^']+' \(the connection closed after \d+\.\d s"
                        rf"|a collective with the other ranks failed: [^\n]*\[{re.escape(lost.address)}\])", text)
    assert stopped, text[-4000:]  # rank 0 named the lost rank at once, not after dist.timeout_s
    assert "resuming from" in text.split("(restart 1)")[1], "the requeued job did not resume"
    assert _students(out) == one_node
    _one_mlflow_run_with_every_step_once(out)
