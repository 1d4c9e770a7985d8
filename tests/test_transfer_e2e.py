"""Zero-/few-shot transfer end to end on the CPU: the demo's tiny students fine-tuned on small English
subsets of the real XNLI / PAN-X / SIQA files with every strategy, evaluated on Turkish, tabulated.

The scores of such tiny students are near chance on Turkish and are not asserted; what is asserted
is that every strategy runs by name on every task, that learning is visible on the English training
subset, and that results, tables, baselines and MLflow links are what docs/transfer.md says.
"""
from __future__ import annotations

import json
import re

import pytest

from conftest import SHARED_DATA
from mdist.cli import main
from mdist.transfer.strategies import STRATEGIES
from mdist.transfer.tasks import get_task

DATA = {  # task: (English training file, Turkish evaluation file, Turkish file for few-shot draws)
    "xnli": (SHARED_DATA / "xnli" / "dev-en.tsv", SHARED_DATA / "xnli" / "dev-tr.tsv", SHARED_DATA / "xnli" / "test-tr.tsv"),
    "ner": (SHARED_DATA / "panx" / "train-en.tsv", SHARED_DATA / "panx" / "dev-tr.tsv", SHARED_DATA / "panx" / "train-tr.tsv"),
    "xcopa": (SHARED_DATA / "siqa" / "train.jsonl", SHARED_DATA / "xcopa" / "tr" / "val.tr.jsonl", SHARED_DATA / "xcopa" / "tr" / "test.tr.jsonl"),
}
CHANCE = {"xnli": 1 / 3, "xcopa": 1 / 3}  # SIQA training: 3 answers
LEARN = {"xnli": ("25", "2e-3"), "ner": ("40", "3e-3"), "xcopa": ("25", "2e-3")}  # epochs, lr: memorise 32 examples


def _need_data():
    missing = [str(p) for files in DATA.values() for p in files if not p.is_file()]
    if missing:
        pytest.skip(f"real task data absent: {missing[0]}")


def _finetune(run_dir, task: str, strategy: str, out, *extra: str) -> dict:
    train, evaluation, _ = DATA[task]
    args = ["finetune", "--task", task, "--strategy", strategy, "--students", str(run_dir), "--src", "en", "--trg", "tr",
            "--train", str(train), "--eval", str(evaluation), "--out", str(out), "--train-limit", "32", "--eval-limit", "24",
            "--epochs", "1", "--batch-size", "16", "--max-length", "48", *extra]
    assert main(args) == 0
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def sweep(demo_run, tmp_path_factory):
    """Every strategy on every task, a task-distilled run and a few-shot run, as `mdist finetune` writes them."""
    _need_data()
    out = tmp_path_factory.mktemp("ft")
    results = {}
    for task in DATA:
        for strategy in STRATEGIES:
            results[task, strategy] = _finetune(demo_run, task, strategy, out / task / strategy)
    return out, results


@pytest.mark.parametrize("task", list(DATA))
def test_every_strategy_runs_by_name_and_scores_turkish(sweep, task):
    _, results = sweep
    metric = get_task(task).metric
    for strategy in STRATEGIES:
        result = results[task, strategy]
        assert result["strategy"] == strategy and result["trg"] == "tr" and result["label"] == "demo-run"
        assert result["zero_shot"]["n"] == 24 and 0.0 <= result["zero_shot"][metric] <= 1.0
        assert result["train"]["n"] == 32
        assert result["fit"]["steps"] == 2  # 32 examples, batch 16, one epoch
        assert result["models"]["evaluated"] == ("src" if strategy == "full-src" else "trg")
        assert bool(result["moved_parameters"]) == (strategy in {"adapter-src", "bitfit-src"} or strategy.startswith("freeze"))


def test_transfer_table_has_every_run_and_the_row_average(sweep, tmp_path):
    out, results = sweep
    table_file = tmp_path / "table.md"
    assert main(["transfer-table", "--runs", str(out), "--out", str(table_file)]) == 0
    table = table_file.read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert header == "| model · strategy | XNLI tr | NER tr | XCOPA tr | Average (accuracy and F1 mixed) |"
    for strategy in STRATEGIES:
        row = next(line for line in table.splitlines() if line.startswith(f"| demo-run · {strategy} |"))
        cells = [float(c.split()[0]) for c in row.strip("|").split("|")[1:]]  # "0.412 (n=1)": one seed each
        scores = [results[t, strategy]["zero_shot"][get_task(t).metric] for t in DATA]
        assert cells[:3] == [round(s, 3) for s in scores]
        assert cells[3] == pytest.approx(sum(scores) / 3, abs=5e-4)


@pytest.mark.parametrize("task", list(DATA))
def test_learning_is_visible_on_the_english_training_subset(demo_run, tmp_path, task):
    _need_data()
    epochs, lr = LEARN[task]
    result = _finetune(demo_run, task, "full-trg", tmp_path / task, "--epochs", epochs, "--lr", lr)
    if task == "ner":
        assert result["train"]["f1"] > 0.3, result["train"]  # entity F1: chance is near 0
    else:
        assert result["train"]["accuracy"] > CHANCE[task] + 0.25, result["train"]


def test_few_shot_task_distillation_baseline_and_mlflow_link(demo_run, tmp_path):
    """Teacher fine-tuned and saved; student distilled from it; few-shot continuations; a baseline;
    the MLflow run of a --students fine-tuning is a child of the distillation run."""
    _need_data()
    from mlflow.tracking import MlflowClient

    train, evaluation, shots = DATA["xnli"]
    common = ["--task", "xnli", "--trg", "tr", "--train", str(train), "--eval", str(evaluation), "--train-limit", "32", "--eval-limit", "24",
              "--epochs", "1", "--batch-size", "16", "--max-length", "48"]
    teacher_ft = tmp_path / "teacher-full"
    assert main(["finetune", *common, "--strategy", "full-src", "--model", str(demo_run / "teacher"), "--out", str(teacher_ft), "--save-model"]) == 0
    assert (teacher_ft / "model" / "task_model.pt").is_file()
    distilled = _finetune(demo_run, "xnli", "full-trg", tmp_path / "td", "--task-teacher", str(teacher_ft / "model"),
                          "--shots", "4", "8", "--shots-file", str(shots), "--few-shot-epochs", "2")
    assert distilled["strategy"] == "full-trg+td"
    assert set(distilled["few_shot"]) == {"4", "8"} and all(s["n"] == 24 for s in distilled["few_shot"].values())
    few = distilled["settings"]["few_shot"]
    assert (few["schedule"], few["warmup"], few["epochs"], few["batch_size"], few["lr"]) == ("linear", 0.1, 2, 32, 2e-5)
    assert len(set(few["drawn"])) == 8 and all(0 <= i < len(get_task("xnli").read(shots)) for i in few["drawn"])  # the 4 shots: its first 4
    assert distilled["settings"]["head"] == "dense-tanh" and distilled["settings"]["ner_labels"] is None
    assert distilled["settings"]["task_teacher_loss"] == "task"
    literal = _finetune(demo_run, "xnli", "adapter-joint", tmp_path / "td-mlm", "--task-teacher", str(teacher_ft / "model"), "--task-teacher-loss", "mlm")
    assert literal["strategy"] == "adapter-joint+td-mlm" and literal["settings"]["task_teacher_loss"] == "mlm"

    assert main(["baseline", "--teacher", str(demo_run / "teacher"), "--layers", "2", "--init", "top", "--out", str(tmp_path / "top2")]) == 0
    provenance = json.loads((tmp_path / "top2" / "baseline.json").read_text())
    assert provenance["teacher_layers"] == [3, 4]
    assert main(["finetune", *common, "--strategy", "full-trg", "--model", str(tmp_path / "top2"), "--out", str(tmp_path / "base"),
                 "--head", "linear", "--shots", "4", "--shots-file", str(shots), "--few-shot-epochs", "1", "--few-shot-schedule", "constant"]) == 0
    base = json.loads((tmp_path / "base" / "result.json").read_text())
    assert base["settings"]["head"] == "linear" and base["settings"]["few_shot"]["schedule"] == "constant"

    assert main(["transfer-table", "--runs", str(tmp_path), "--out", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert re.search(r"\| demo-run · full-trg\+td \| [0-9.]+ \(n=1\) \| [0-9.]+ \(n=1\) \| [0-9.]+ \(n=1\) \|", table)  # few-shot table: k=0, 4, 8
    assert "| top2 · full-trg |" in table and "| teacher · full-src |" in table

    summary = json.loads((demo_run / "summary.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{demo_run / 'mlflow.db'}")
    parent = summary["mlflow_run_id"]
    children = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert all(c.data.tags.get("mdist.distillation_run_id") == parent for c in children)
    by_strategy = {run.data.params["strategy"]: run for run in children if "strategy" in run.data.params}  # the demo's retrieval is a child too
    assert any(run.info.run_name == "eval retrieval" for run in children)
    assert "full-trg+td" in by_strategy
    assert by_strategy["full-trg+td"].data.metrics["xnli.tr.few_shot_8.accuracy"] == pytest.approx(distilled["few_shot"]["8"]["accuracy"])


def test_ner_with_every_sub_token_labelled_runs_and_says_so(demo_run, tmp_path):
    _need_data()
    result = _finetune(demo_run, "ner", "full-trg", tmp_path / "ner-all", "--ner-labels", "all")
    assert result["settings"]["ner_labels"] == "all" and result["settings"]["head"] == "linear"
    assert 0.0 <= result["zero_shot"]["f1"] <= 1.0 and result["zero_shot"]["n"] == 24


@pytest.mark.parametrize("setup,message", [
    (lambda d: ("--strategy", "adapter-middle"), "unknown transfer strategy 'adapter-middle'"),
    (lambda d: ("--strategy", "full-trg", "--train", str(d / "bad.tsv")), r"bad\.tsv:2: expected 3 tab-separated columns"),
    (lambda d: ("--strategy", "full-trg", "--shots", "5"), "--shots needs --shots-file"),
    (lambda d: ("--strategy", "full-trg", "--lr", "-1"), "argument --lr: must be > 0, got -1"),
    (lambda d: ("--strategy", "full-trg", "--ner-labels", "all"), "--ner-labels applies to --task ner only, not xnli"),
    (lambda d: ("--strategy", "full-trg", "--task-teacher-loss", "mlm"), "--task-teacher-loss needs --task-teacher"),
    (lambda d: ("--strategy", "full-trg", "--eval", str(d / "missing.tsv")), r"missing\.tsv' does not exist"),
])
def test_bad_input_gives_one_clear_line(demo_run, tmp_path, capsys, setup, message):
    (tmp_path / "bad.tsv").write_text("a\tb\tneutral\nonly two\tcolumns\n")
    (tmp_path / "ok.tsv").write_text("a\tb\tneutral\nc\td\tentailment\n")
    args = dict(zip(*[iter(["--train", str(tmp_path / "ok.tsv"), "--eval", str(tmp_path / "ok.tsv")])] * 2))
    extra = setup(tmp_path)
    for key in ("--train", "--eval"):
        if key not in extra:
            extra = (*extra, key, args[key])
    try:
        code = main(["finetune", "--task", "xnli", "--students", str(demo_run), "--trg", "tr", "--out", str(tmp_path / "o"), *extra])
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mdist finetune: error: ")]
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
