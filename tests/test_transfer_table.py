"""The transfer tables: a cell run with several seeds shows their mean; two runs of one seed are refused."""
from __future__ import annotations

import json

import pytest

from mdist.errors import DataError
from mdist.transfer.table import transfer_tables


def _result(root, name: str, seed: int, zero: float, few: float, task: str = "xnli") -> None:
    path = root / name / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"task": task, "metric": "accuracy", "strategy": "full-trg", "label": "s", "trg": "tr", "settings": {"seed": seed},
                                "zero_shot": {"accuracy": zero}, "few_shot": {"10": {"accuracy": few}}}))


def test_seeds_of_one_cell_are_averaged(tmp_path):
    _result(tmp_path, "a", 1, 0.40, 0.50)
    _result(tmp_path, "b", 2, 0.45, 0.60)
    _result(tmp_path, "c", 1, 0.70, 0.80, task="ner")
    text = transfer_tables(tmp_path)
    assert "| s · full-trg | 0.425 | 0.700 | 0.562 |" in text  # (0.40 + 0.45) / 2; row average (0.425 + 0.70) / 2
    assert "| s · full-trg | 0.425 | 0.550 | 0.700 | 0.800 |" in text  # few-shot: k=0 and k=10 per column


def test_two_runs_of_one_seed_in_one_cell_are_refused(tmp_path):
    _result(tmp_path, "a", 1, 0.40, 0.50)
    _result(tmp_path, "b", 1, 0.45, 0.60)
    with pytest.raises(DataError, match="two results for 's · full-trg' on xnli-tr"):
        transfer_tables(tmp_path)
