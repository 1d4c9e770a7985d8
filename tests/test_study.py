"""`mdist study`: the shipped tiny study end to end on the real shared data (small subsets), on this
machine (killed mid-run, then run again) and on the tests' one-node SLURM cluster; the thesis study's
plan; the tables checked against the stage results they come from.

Without SLURM (or not as root) the SLURM test is skipped with the reason; in CI (CI set) it fails.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from mdist.cli import main
from mdist.study.config import data_files, load_study
from test_slurm import slurm  # noqa: F401 (the one-node cluster fixture)

ROOT = Path(__file__).resolve().parents[1]
TINY_STAGES = 16  # prep ×2, distill ×2, baseline, retrieval ×4, perplexity ×2, finetune 2 models × 2 tasks, report


def _need_data():
    if not (SHARED_DATA / "xnli" / "dev-en.tsv").is_file():
        pytest.skip(f"real shared data absent: {SHARED_DATA}")


def _tiny(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["tiny", "--out", str(out), "--set", f"teacher={teacher}", "--set", f"data={SHARED_DATA}", *extra]


@pytest.fixture
def cpu_env(monkeypatch):
    for key, value in {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _records(out: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in (out / "stages").glob("*.json")}


def test_thesis_study_plans_every_stage_with_its_dependencies_and_resources(tmp_path, tiny_teacher_dir):
    """The chapter-4 study, with empty stand-ins for its data files: 3 languages prepared, 3 distillations,
    3 baselines, retrieval of 7 models in 2 languages, the grid (15 model · strategy rows × 3 tasks × 2 languages)."""
    from mdist.config import build_dataclass, read_yaml_mapping
    from mdist.study.config import Study
    from mdist.study.stages import plan

    raw, _ = read_yaml_mapping("thesis-ch4", "mdist.studies", "study")
    for name in data_files(build_dataclass(Study, raw, "")).values():
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_text("x\n")
    study = load_study("thesis-ch4", [f"teacher={tiny_teacher_dir}", f"data={tmp_path / 'data'}"])
    stages = {stage.name: stage for stage in plan(study, tmp_path / "out")}
    kinds = [stage.kind for stage in stages.values()]
    assert [kinds.count(k) for k in ("prep", "distill", "baseline", "retrieval", "perplexity", "finetune", "report")] == [3, 3, 3, 14, 6, 90, 1]
    distill = stages["distill-bilingual"]
    assert distill.deps == ["prep-en", "prep-tr", "prep-sw"] and "students.groups={en_tr: [en, tr], en_sw: [en, sw]}" in distill.argv
    assert "data.kind=shards" in distill.argv and "--resume" in distill.argv
    grid = stages["finetune-monoshot-adapter-joint-xcopa-sw-seed42"]
    assert grid.deps == ["distill-monoshot"] and grid.argv[grid.argv.index("--shots") + 1:][:3] == ["10", "50", "100"]
    assert stages["finetune-baseline-top-full-trg-ner-tr-seed42"].deps == ["baseline-top"]
    assert stages["retrieval-teacher-sw"].deps == [] and set(stages["report"].deps) == {s for s in stages if not s.startswith(("prep", "report"))}


def test_a_refused_study_writes_and_submits_nothing(tiny_teacher_dir, tmp_path, capsys):
    assert main(["study", "run", *_tiny(tiny_teacher_dir, tmp_path / "s", "--set", f"data={tmp_path}"), "--slurm"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "s").exists()


def test_a_study_running_elsewhere_is_refused(tiny_teacher_dir, tmp_path, capsys):
    _need_data()
    import socket

    from mdist.study.stages import plan
    from mdist.study.state import write_record

    out = tmp_path / "s"
    first = plan(load_study("tiny", [f"teacher={tiny_teacher_dir}", f"data={SHARED_DATA}"]), out)[0]
    write_record(out, first.name, {"state": "running", "argv": first.argv, "pid": os.getpid(), "host": socket.gethostname()})
    assert main(["study", "run", *_tiny(tiny_teacher_dir, out)]) == 2
    assert f"error: stage {first.name} of this study is running (pid {os.getpid()} on" in capsys.readouterr().err


def test_plan_prints_stages_commands_dependencies_and_resources(tiny_teacher_dir, tmp_path, capsys):
    _need_data()
    assert main(["study", "plan", *_tiny(tiny_teacher_dir, tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert f"study 'tiny' in {tmp_path / 's'}: {TINY_STAGES} stages" in text
    block = text.split("\nfinetune-monoshot-full-trg-xnli-tr-seed42  ")[1].split("\n\n")[0]
    assert "--cpus-per-task 1 --time 00:10:00" in block and "after: distill-monoshot" in block
    assert f"--students {tmp_path / 's' / 'runs' / 'monoshot'}" in block and "--shots 8" in block
    assert "after: prep-en, prep-tr" in text.split("\ndistill-monoalignment  ")[1].split("\n\n")[0]
    assert not (tmp_path / "s").exists()  # a plan writes nothing


def _wait_for(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _cells(table: str, row: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {row} |"))
    return [cell.strip() for cell in line.strip("|").split("|")[1:]]


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory, tiny_teacher_dir):
    """The tiny study run as `mdist study run` would be from a shell, killed (runner and stage, SIGKILL) while
    its second distillation runs; the records then; the run again to the end; its output."""
    _need_data()
    out = tmp_path_factory.mktemp("study") / "tiny"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "mdist", "study", "run", *_tiny(tiny_teacher_dir, out)]
    first = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    record = out / "stages" / "distill-monoalignment.json"
    try:
        _wait_for(lambda: record.is_file() or first.poll() is not None, 600, "the second distillation did not start")
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, first.stdout.read().decode()[-3000:]
    before = _records(out)
    status = subprocess.run([sys.executable, "-m", "mdist", "study", "status", str(out)], env=env, capture_output=True, text=True)
    second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    return out, before, status.stdout, second.stdout


def test_a_killed_study_resumes_without_redoing_finished_stages(killed_and_rerun):
    out, before, status, rerun = killed_and_rerun
    assert before["distill-monoalignment"]["state"] == "running" and before["distill-monoshot"]["state"] == "done"
    assert re.search(r"\| distill-monoalignment \| failed \(its process is gone \(killed\?\)\) \|", status), status
    assert re.search(r"\| finetune-teacher-full-src-ner-tr-seed42 \| pending \|", status), status
    after = _records(out)
    assert len(after) == TINY_STAGES and all(record["state"] == "done" for record in after.values()), after
    for name in ("prep-en", "prep-tr", "distill-monoshot"):  # finished before the kill: not run again
        assert after[name] == before[name] and f"{name}: done, skipped" in rerun
    assert after["distill-monoalignment"]["attempt"] == 2 and after["distill-monoalignment"]["start"] >= before["distill-monoalignment"]["start"]
    log = Path(after["distill-monoalignment"]["log"]).read_text()
    assert log.count("==== ") == 2 and "attempt 2" in log


def test_a_finished_study_runs_nothing_again(killed_and_rerun, tiny_teacher_dir, capsys, cpu_env):
    out = killed_and_rerun[0]
    records = _records(out)
    assert main(["study", "run", *_tiny(tiny_teacher_dir, out)]) == 0
    assert capsys.readouterr().out.count(": done, skipped") == TINY_STAGES
    assert _records(out) == records


def test_tables_hold_the_numbers_of_the_stage_results(killed_and_rerun):
    out = killed_and_rerun[0]
    transfer = (out / "tables" / "transfer.md").read_text()
    header = next(line for line in transfer.splitlines() if line.startswith("| model"))
    assert header == "| model · strategy | XNLI tr | NER tr | Average (accuracy and F1 mixed) |"
    for model, strategy in (("monoshot", "full-trg"), ("teacher", "full-src")):
        scores = []
        for task, metric in (("xnli", "accuracy"), ("ner", "f1")):
            result = json.loads((out / "finetune" / model / strategy / f"{task}-tr-seed42" / "result.json").read_text())
            scores.append(result["zero_shot"][metric])
        cells = [float(c.split()[0]) for c in _cells(transfer, f"{model} · {strategy}")]  # "0.412 (n=1)": one seed
        assert cells[:2] == [round(s, 3) for s in scores] and cells[2] == pytest.approx(sum(scores) / 2, abs=5e-4)
    few = json.loads((out / "finetune" / "monoshot" / "full-trg" / "xnli-tr-seed42" / "result.json").read_text())
    few_shot = transfer.split("## Few-shot")[1]
    assert _cells(few_shot, "monoshot · full-trg") == [f"{few['zero_shot']['accuracy']:.3f} (n=1)", f"{few['few_shot']['8']['accuracy']:.3f} (n=1)"]

    retrieval = (out / "tables" / "retrieval-tr.md").read_text()
    for model in ("teacher", "baseline-bottom", "monoshot", "monoalignment"):
        result = json.loads((out / "eval" / "retrieval" / "tr" / f"{model}.json").read_text())
        layers = {int(k[len("layer_"):]): v for k, v in result["bertscore"].items() if k.startswith("layer_")}
        best = max(layers.values())
        cells = _cells(retrieval, model)
        assert cells[7] == f"{best:.3f} ({min(k for k, v in layers.items() if v == best)})"  # bertscore's best layer
        assert cells[8] == f"{result['bertscore']['all']:.3f}" and cells[1] == f"{result['cosine']['all']:.3f}"
    perplexity = json.loads((out / "eval" / "perplexity" / "tr" / "monoshot.json").read_text())["pseudo_perplexity"]
    assert _cells((out / "tables" / "perplexity.md").read_text(), "monoshot") == [f"{perplexity:.2f}"]


def test_report_links_tables_and_per_layer_plots(killed_and_rerun):
    out = killed_and_rerun[0]
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert {"tables/transfer.md", "tables/retrieval-tr.md", "plots/retrieval-tr.png", "tables/perplexity.md"} <= set(links)
    assert all((out / link).is_file() for link in links)
    assert (out / "plots" / "retrieval-tr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_mlflow_experiment_holds_every_stage_run_tagged(killed_and_rerun):
    from mlflow.tracking import MlflowClient

    out = killed_and_rerun[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert all(run.data.tags["mdist.study"] == "tiny" for run in runs)
    stages = {run.data.tags["mdist.stage"] for run in runs}
    expected = {name for name in _records(out) if not name.startswith(("prep", "baseline", "report"))}  # the stages that log runs
    assert stages == expected
    assert {e.name for e in client.search_experiments()} == {"tiny", "Default"}  # nothing logged elsewhere in the study's store


def test_tiny_study_on_slurm_chains_jobs_and_resubmits_only_what_a_cancelled_job_left(slurm, tiny_teacher_dir, tmp_path, capsys, cpu_env, monkeypatch):  # noqa: F811
    """Every stage a job (afterok), the grid one array; the second distillation's job is cancelled while it
    runs, its dependants leave the queue; submitting again runs those stages only, and the study completes.
    The grid and the perplexity stages are trimmed (the local test runs them all): 12 stages, 2 array tasks."""
    _need_data()
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    out = tmp_path / "tiny"
    trimmed = _tiny(tiny_teacher_dir, out, "--set", "finetune.models={monoshot: [full-trg]}", "--set", "perplexity={}", "--slurm")
    assert main(["study", "run", *trimmed]) == 0
    submitted = capsys.readouterr().out
    assert "finetune: job array" in submitted and "(2 tasks)" in submitted and "submitted 12 stage(s)" in submitted
    target = out / "stages" / "distill-monoalignment.json"
    _wait_for(lambda: json.loads(target.read_text())["state"] == "running", 600, "the second distillation did not start")
    subprocess.run(["scancel", json.loads(target.read_text())["job_id"]], env=slurm.env, check=True)
    _wait_for(lambda: not slurm.queued(), 900, "the study's jobs did not leave the queue")
    before = _records(out)
    assert main(["study", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert re.search(r"\| distill-monoalignment \| failed \((its process is gone|SLURM job \d+ left the queue)", status), status
    assert re.search(r"\| report \| failed \(SLURM job \d+ left the queue", status), status  # its dependency failed: cancelled

    assert main(["study", "run", *trimmed]) == 0
    again = capsys.readouterr().out
    assert "submitted 3 stage(s)" in again, again  # distill-monoalignment, its retrieval, the report
    _wait_for(lambda: not slurm.queued(), 900, "the resubmitted jobs did not leave the queue")
    records = _records(out)
    failed = {name: Path(r["log"]).read_text()[-2000:] for name, r in records.items() if r["state"] != "done" and r.get("log")}
    assert all(r["state"] == "done" for r in records.values()), failed or records
    redone = {name for name in records if records[name] != before[name]}
    assert redone == {"distill-monoalignment", "retrieval-monoalignment-tr", "report"}
    assert records["distill-monoalignment"]["attempt"] == 2

    from mdist.study.stages import plan

    for stage in plan(load_study("tiny", [f"teacher={tiny_teacher_dir}", f"data={SHARED_DATA}", "finetune.models={monoshot: [full-trg]}", "perplexity={}"]), out):
        for dep in stage.deps:  # afterok: no stage started before each of its dependencies ended
            assert records[stage.name]["start"] >= records[dep]["end"], (stage.name, dep)
    arrays = {records[name]["job_id"].split("_")[0] for name in records if name.startswith("finetune-")}
    assert len(arrays) == 1 and all("_" in records[name]["job_id"] for name in records if name.startswith("finetune-"))
    assert (out / "report.md").is_file() and (out / "plots" / "retrieval-tr.png").is_file()
