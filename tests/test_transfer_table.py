"""The transfer tables: a cell shows the mean ± sample standard deviation of its seeds and n; row
averages say when they mix metrics or cover fewer cells; a model's rows with and without task
distillation stand together; two runs of one seed are refused."""
from __future__ import annotations

import json
import statistics

import pytest

from mdist.errors import DataError
from mdist.transfer.table import transfer_tables


def _result(root, name: str, seed: int, zero: float, few: float, task: str = "xnli", strategy: str = "full-trg", label: str = "s",
            eval_sha: str = "e1", lr: float = 2e-5) -> None:
    metric = "f1" if task == "ner" else "accuracy"
    path = root / name / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"task": task, "metric": metric, "strategy": strategy, "label": label, "trg": "tr",
                                "settings": {"seed": seed, "lr": lr, "device": f"cuda:{seed}", "few_shot": {"epochs": 50, "seed": seed}},
                                "inputs": {"eval": {"path": "/d/dev-tr.tsv", "sha256": eval_sha, "examples": 9}},
                                "zero_shot": {metric: zero}, "few_shot": {"10": {metric: few}}}))


def _row(text: str, name: str, table: int = 0) -> list[str]:
    """The cells of row `name` in the zero-shot (0) or few-shot (1) table."""
    rows = [line for line in text.split("## ")[table + 1].splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, text
    return [cell.strip() for cell in rows[0].strip("|").split("|")[1:]]


def test_a_cell_shows_the_mean_sample_std_and_n_of_its_seeds(tmp_path):
    for seed, (zero, few) in enumerate([(0.40, 0.50), (0.45, 0.60), (0.53, 0.61)], start=1):
        _result(tmp_path, f"x{seed}", seed, zero, few)
    _result(tmp_path, "c", 1, 0.70, 0.80, task="xcopa")
    text = transfer_tables(tmp_path)
    std = statistics.stdev([0.40, 0.45, 0.53])  # sample (n − 1) standard deviation: 0.0656
    assert _row(text, "s · full-trg") == [f"0.460 ± {std:.3f} (n=3)", "0.700 (n=1)", f"{(0.46 + 0.70) / 2:.3f}"]
    assert _row(text, "s · full-trg", 1) == [f"0.460 ± {std:.3f} (n=3)", f"{statistics.mean([0.5, 0.6, 0.61]):.3f} ± {statistics.stdev([0.5, 0.6, 0.61]):.3f} (n=3)",
                                             "0.700 (n=1)", "0.800 (n=1)"]
    assert "mean ± sample standard deviation over seeds" in text


def test_row_averages_say_what_they_cover_and_mix(tmp_path):
    _result(tmp_path, "a1", 1, 0.40, 0.5)
    _result(tmp_path, "a2", 1, 0.60, 0.5, task="ner")
    _result(tmp_path, "b1", 1, 0.50, 0.5, label="t")  # XNLI only: its average is not comparable with s's
    text = transfer_tables(tmp_path)
    assert "| model · strategy | XNLI tr | NER tr | Average (accuracy and F1 mixed) |" in text
    assert _row(text, "s · full-trg")[-1] == "0.500"
    assert _row(text, "t · full-trg")[-1] == "0.500 (1 of 2 cells)"


def test_average_of_one_metric_says_nothing_more(tmp_path):
    _result(tmp_path, "a", 1, 0.40, 0.5)
    _result(tmp_path, "b", 1, 0.60, 0.5, task="xcopa")
    assert "| XNLI tr | XCOPA tr | Average |" in transfer_tables(tmp_path)


def test_rows_of_one_model_with_and_without_task_distillation_stand_together(tmp_path):
    for i, (label, strategy) in enumerate([("s", "full-trg+td"), ("t", "full-trg"), ("s", "sft"), ("s", "full-trg"), ("s", "adapter-src+td")]):
        _result(tmp_path, f"r{i}", 1, 0.5, 0.5, strategy=strategy, label=label)
    text = transfer_tables(tmp_path).split("## ")[1]
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert rows == ["s · adapter-src+td", "s · full-trg", "s · full-trg+td", "s · sft", "t · full-trg"]


def test_two_runs_of_one_seed_in_one_cell_are_refused(tmp_path):
    _result(tmp_path, "a", 1, 0.40, 0.50)
    _result(tmp_path, "b", 1, 0.45, 0.60)
    with pytest.raises(DataError, match="two results for 's · full-trg' on xnli-tr"):
        transfer_tables(tmp_path)


@pytest.mark.parametrize("change, named", [({"eval_sha": "e2"}, "eval file"), ({"lr": 1e-4}, "lr")])
def test_runs_that_differ_in_more_than_their_seed_are_not_pooled(tmp_path, change, named):
    _result(tmp_path, "a", 1, 0.40, 0.50)
    _result(tmp_path, "b", 2, 0.45, 0.60, **change)  # e.g. evaluated on the test file, not the dev file
    with pytest.raises(DataError, match=rf"'s · full-trg' on xnli-tr: .*a/result.json and .*b/result.json differ in {named}, not only in their seed"):
        transfer_tables(tmp_path)
