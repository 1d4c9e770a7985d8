"""SLURM as a tested launcher: the scripts of slurm/ on a real one-node cluster (tests/slurm_cluster.py).

- distill.sbatch with 2 CPU tasks (gloo) on the tiny recipe exports students that load;
- pre-emption: `scancel --signal=USR1 --batch` mid-run (what `--signal=B:USR1@120` does before the
  time limit); the job checkpoints, requeues itself, resumes and ends with byte-identical students
  to the uninterrupted job, in one MLflow run that logged each step once;
- tasks that crash (a bad --set) fail the job at once, with the error in the job log;
- rank / world size / local rank under plain srun and under torchrun started inside an allocation;
- eval.sbatch and finetune.sbatch on the distilled run.

Without SLURM (or not as root) these tests are skipped with the reason; in CI (CI set) they fail
instead, since CI installs SLURM (.ci/run).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdist.engine import free_port
from slurm_cluster import LocalSlurm

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 24
TASKS = ["--nodes", "1", "--ntasks-per-node", "2", "--cpus-per-task", "1"]  # the README's N nodes x G GPUs, scaled down
DISTILL = ["slurm/distill.sbatch", "tiny", "--set", f"train.steps={STEPS}", "--set", "train.save_every=4"]


@pytest.fixture(scope="module")
def slurm(slurm_cluster) -> LocalSlurm:
    return slurm_cluster(1)


def _submit(slurm: LocalSlurm, log: Path, *args: str) -> str:
    return slurm.sbatch("--output", str(log), *args, env=slurm.user_env(), cwd=ROOT)


def _students(out: Path) -> dict[str, bytes]:
    return {name: (out / "students" / name / "model.safetensors").read_bytes() for name in ("en", "tr")}


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory) -> Path:
    """An uninterrupted 2-task distill job; its run directory."""
    root = tmp_path_factory.mktemp("reference")
    job = slurm.wait(_submit(slurm, root / "job.log", *TASKS, *DISTILL[:2], str(root / "run"), *DISTILL[2:]), timeout=300)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "0"), (root / "job.log").read_text()[-4000:]
    return root / "run"


def test_distill_job_exports_students_that_load(reference):
    from transformers import AutoModelForMaskedLM

    summary = json.loads((reference / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    for name in ("en", "tr"):
        model = AutoModelForMaskedLM.from_pretrained(reference / "students" / name)
        assert model.config.num_hidden_layers == 2


def test_preempted_job_requeues_itself_and_ends_with_the_same_students(slurm, reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.log"
    job_id = _submit(slurm, log, *TASKS, *DISTILL[:2], str(out), *DISTILL[2:])
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "latest").is_file():  # mid-run: after the first checkpoint
        assert slurm.job(job_id)["JobState"] in ("PENDING", "RUNNING"), log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm.env, check=True)

    job = slurm.wait(job_id, timeout=300)
    text = log.read_text()
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), text[-4000:]
    assert text.count("stopped by signal") == 2 and "requeueing job" in text, text[-4000:]
    assert "resuming from" in text.split("(restart 1)")[1], "the requeued job did not resume"
    assert _students(out) == _students(reference)

    from mlflow.tracking import MlflowClient  # one MLflow run across both starts, each step logged once

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs(["0", "1"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "lr")) == list(range(STEPS))


def test_crashing_tasks_fail_the_job_at_once_with_the_error_in_its_log(slurm, tmp_path):
    log = tmp_path / "job.log"
    started = time.monotonic()
    job = slurm.wait(_submit(slurm, log, *TASKS, *DISTILL[:2], str(tmp_path / "run"), "--set", "train.no_such_key=1"), timeout=120)
    assert (job["JobState"], job["Restarts"]) == ("FAILED", "0")
    assert "no_such_key" in log.read_text()
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_ranks_under_srun_and_under_torchrun_inside_the_allocation(launcher, slurm, tmp_path):
    """Plain srun: mdist.engine reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. torchrun started
    by srun (one task per node): torchrun's RANK / WORLD_SIZE / LOCAL_RANK win over srun's."""
    probe, reports = ROOT / "tests" / "rank_probe.py", tmp_path / "reports"
    reports.mkdir()
    if launcher == "srun":
        command = ["srun", "--ntasks", "2", sys.executable, str(probe), str(reports)]
    else:
        command = ["srun", "--ntasks", "1", "--cpus-per-task", "2", str(BIN / "torchrun"), "--nproc_per_node", "2",
                   "--master_port", str(free_port()), str(probe), str(reports)]
    proc = subprocess.run(command, env=slurm.user_env(), cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    seen = [json.loads(path.read_text()) for path in sorted(reports.iterdir())]
    assert [(r["rank"], r["world"], r["local_rank"]) for r in seen] == [(0, 2, 0), (1, 2, 1)], proc.stdout
    assert all([rank_and_local[:2] for rank_and_local in r["group"]] == [[0, 0], [1, 1]] for r in seen), seen


def test_eval_and_finetune_jobs_on_the_distilled_run(slurm, reference, tmp_path):
    from mdist.data.synthetic import SyntheticCorpus
    from mdist.demo import write_tagged

    corpus = SyntheticCorpus(seed=0)
    queries, candidates = corpus.parallel("tr", "en", pairs=20)
    (tmp_path / "q.tr").write_text("\n".join(queries) + "\n")
    (tmp_path / "c.en").write_text("\n".join(candidates) + "\n")
    (tmp_path / "heldout.tr").write_text("\n".join(corpus.monolingual("tr", documents=10, split=1)) + "\n")
    write_tagged(tmp_path / "ner-en.tsv", corpus.tagged("en", 40, split=2))
    write_tagged(tmp_path / "ner-tr.tsv", corpus.tagged("tr", 20, split=3))
    one = ["--ntasks", "1", "--cpus-per-task", "1"]  # both jobs at once, one CPU each

    evaluation = _submit(slurm, tmp_path / "eval.log", *one, "slurm/eval.sbatch", str(reference), "tr",
                         str(tmp_path / "q.tr"), str(tmp_path / "c.en"), str(tmp_path / "heldout.tr"))
    finetune = _submit(slurm, tmp_path / "finetune.log", *one, "slurm/finetune.sbatch", "--task", "ner", "--strategy", "full-trg",
                       "--src-model", str(reference / "students" / "en"), "--trg-model", str(reference / "students" / "tr"), "--trg", "tr",
                       "--train", str(tmp_path / "ner-en.tsv"), "--eval", str(tmp_path / "ner-tr.tsv"),
                       "--out", str(tmp_path / "ner"), "--epochs", "1", "--batch-size", "8")
    for job_id, log in ((evaluation, "eval.log"), (finetune, "finetune.log")):
        job = slurm.wait(job_id, timeout=240)
        assert job["JobState"] == "COMPLETED", (tmp_path / log).read_text()[-4000:]
    assert set(json.loads((reference / "eval" / "retrieval-tr.json").read_text())) >= {"cosine", "bertscore"}
    assert json.loads((reference / "eval" / "perplexity-tr.json").read_text())["pseudo_perplexity"] > 1
    assert (tmp_path / "ner" / "result.json").is_file()
