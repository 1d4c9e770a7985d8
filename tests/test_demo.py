"""The embedded main job, shortened: pre-train a cross-lingual teacher, distil MonoShot and no-alignment
students, evaluate retrieval and zero-shot transfer, report one table."""
from __future__ import annotations

import json

import numpy as np

from mdist.demo import THREADS, DemoSize, run_demo

MODELS = ("teacher", "monoshot", "no-alignment")


def demo_summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["demo"]


def test_demo_reports_every_model_next_to_chance(demo_run):
    demo = demo_summary(demo_run)
    assert demo["chance"] == 1 / demo["pairs"]
    for model in MODELS:
        result = demo["retrieval"][model]
        assert result["n"] == demo["pairs"]
        assert {"layer_0", "all", "top4"} <= set(result["cosine"]) and set(result["cosine"]) == set(result["bertscore"])
    for student in ("students", "no-alignment/students"):
        assert (demo_run / student / "tr" / "config.json").is_file() and (demo_run / student / "en" / "config.json").is_file()
    rows = {line.split("  ")[0]: line for line in demo["table"].splitlines()}
    assert f"chance {demo['chance']:.3f}" in demo["table"]
    zero_shot = demo["transfer"]["monoshot"]["zero_shot_f1"]
    assert len(zero_shot) > 1  # a spread to show
    assert rows["MonoShot students"].split()[2:6] == ["2", f"{demo['retrieval']['monoshot']['cosine']['all']:.2f}", f"{np.mean(zero_shot):.2f}", "±"]
    assert rows["MonoShot students"].split()[6] == f"{np.std(zero_shot, ddof=1):.2f}"


def test_demo_runs_the_transfer_half_per_model_and_seed(demo_run):
    """One task, one strategy: each tr model fine-tuned on English NER, scored on Turkish, once per seed."""
    transfer = demo_summary(demo_run)["transfer"]
    assert set(transfer) == set(MODELS)
    for model, scores in transfer.items():
        assert (scores["task"], scores["strategy"]) == ("ner", "full-trg")
        for seed, f1 in zip(scores["seeds"], scores["zero_shot_f1"]):
            result = json.loads((demo_run / "transfer" / f"{model}-seed{seed}" / "result.json").read_text())
            assert result["zero_shot"]["f1"] == f1 and result["models"]["trg"].endswith(f"{'teacher' if model == 'teacher' else 'tr'}")


def test_demo_shows_the_method(demo_run):
    """The claim the table states: MonoShot students keep the teacher's alignment, no-alignment students lose it."""
    demo = demo_summary(demo_run)
    retrieval = {model: demo["retrieval"][model]["cosine"] for model in MODELS}
    monoshot, teacher, none = retrieval["monoshot"]["all"], retrieval["teacher"]["all"], retrieval["no-alignment"]["all"]
    assert monoshot > 20 * demo["chance"] and monoshot > teacher - 0.15
    assert none < 3 * demo["chance"]
    zero_shot = {model: np.mean(demo["transfer"][model]["zero_shot_f1"]) for model in MODELS}  # one seed may transfer badly
    assert zero_shot["monoshot"] > zero_shot["no-alignment"] + 0.2 and zero_shot["no-alignment"] < 0.1


def test_two_runs_print_the_same_table(demo_run, tmp_path, capsys):
    """Deterministic: the same numbers (here to the last digit, not only two decimals), the caller's threads kept."""
    import torch

    from conftest import DEMO_SIZE, DEMO_OVERRIDES

    torch.set_num_threads(2)
    again = run_demo(tmp_path / "again", DemoSize(**DEMO_SIZE), DEMO_OVERRIDES)["demo"]
    first = demo_summary(demo_run)
    assert again["table"] == first["table"] and again["table"] in capsys.readouterr().out
    assert again["retrieval"] == first["retrieval"] and again["transfer"] == first["transfer"]
    assert torch.get_num_threads() == 2 != THREADS and not torch.are_deterministic_algorithms_enabled()
