"""The shipped bilingual recipe: one student owning en and tr, which a tiny teacher can distil in one step."""
from __future__ import annotations

import json
from dataclasses import asdict

from mdist.config import load_run_config
from mdist.run import run_distillation


def test_bilingual_recipe_has_one_student_for_both_languages(tmp_path):
    cfg = load_run_config("xlmr-base-bilingual", [f"teacher.path={tmp_path}", "data.kind=synthetic"])
    assert cfg.students.groups == {"en_tr": ["en", "tr"]} and cfg.languages == ["en", "tr"]
    assert (cfg.strategy, cfg.students.layers, cfg.train.batch_size, cfg.train.steps) == ("monoshot", 6, 16, 500_000)


def test_bilingual_recipe_runs_one_step_with_the_tiny_teacher(tmp_path):
    tiny = load_run_config("tiny")
    overrides = [
        "teacher.path=tiny-random",
        f"teacher.tiny={json.dumps(asdict(tiny.teacher.tiny))}",
        f"students.layers={tiny.students.layers}",
        "data.kind=synthetic",
        "train.steps=1", "train.batch_size=2", "train.seq_len=32", "train.warmup_steps=0", "train.save_every=0", "train.log_every=1",
        "tracking.enabled=false",
    ]
    summary = run_distillation(load_run_config("xlmr-base-bilingual", overrides), tmp_path / "run")
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["steps"] == 1 and written["students"]["en_tr"]["languages"] == ["en", "tr"]
    assert set(written["final_losses"]) == {"en_tr/en", "en_tr/tr"}
    assert (tmp_path / "run" / "students" / "en_tr" / "config.json").is_file()
    assert summary["steps"] == 1
