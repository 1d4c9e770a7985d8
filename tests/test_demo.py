"""The embedded main job, shortened: pre-train, distil, evaluate, report."""
from __future__ import annotations

import json

from mdist.demo import HELD_OUT_PAIRS, run_demo


def test_demo_reports_retrieval_next_to_chance(tmp_path, capsys):
    summary = run_demo(tmp_path, pretrain_steps=10, overrides=["train.steps=3"])
    demo = json.loads((tmp_path / "summary.json").read_text())["demo"]
    assert demo == summary["demo"]
    assert demo["chance"] == 1 / HELD_OUT_PAIRS
    for model in ("teacher", "students (tr -> en)"):
        result = demo["retrieval"][model]
        assert result["n"] == HELD_OUT_PAIRS
        assert {"layer_0", "all", "top4"} <= set(result["cosine"]) and set(result["cosine"]) == set(result["bertscore"])
        assert all(0.0 <= v <= 1.0 for v in result["cosine"].values())
    assert "chance" in capsys.readouterr().out
    assert (tmp_path / "students" / "tr" / "config.json").is_file()
