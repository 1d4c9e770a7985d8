"""The embedded main job, shortened: pre-train, distil, evaluate retrieval, transfer, report."""
from __future__ import annotations

import json

from mdist.demo import HELD_OUT_PAIRS, NER_EVAL, NER_TRAIN, format_table


def test_demo_reports_retrieval_next_to_chance(demo_run):
    demo = json.loads((demo_run / "summary.json").read_text())["demo"]
    assert demo["chance"] == 1 / HELD_OUT_PAIRS
    for model in ("teacher", "students (tr -> en)"):
        result = demo["retrieval"][model]
        assert result["n"] == HELD_OUT_PAIRS
        assert {"layer_0", "all", "top4"} <= set(result["cosine"]) and set(result["cosine"]) == set(result["bertscore"])
        assert all(0.0 <= v <= 1.0 for v in result["cosine"].values())
    assert "chance" in format_table(demo["retrieval"], demo["chance"])
    assert (demo_run / "students" / "tr" / "config.json").is_file()


def test_demo_runs_the_transfer_half(demo_run):
    """One task, one strategy: the tr student fine-tuned on English NER, scored on Turkish."""
    transfer = json.loads((demo_run / "summary.json").read_text())["demo"]["transfer"]
    assert (transfer["task"], transfer["strategy"]) == ("ner", "full-trg")
    assert transfer["train"]["n"] == NER_TRAIN and transfer["zero_shot"]["n"] == NER_EVAL
    assert 0.0 <= transfer["zero_shot"]["f1"] <= 1.0
    written = (demo_run / "transfer" / "ner-eval-tr.tsv").read_text().split("\n\n")
    assert len([s for s in written if s.strip()]) == NER_EVAL
    result = json.loads((demo_run / "transfer" / "ner-full-trg" / "result.json").read_text())
    assert result["zero_shot"] == transfer["zero_shot"]
