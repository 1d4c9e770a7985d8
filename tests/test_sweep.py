"""`mdist sweep` and `mdist runs --sweep`: a 2 × 2 grid (student depth × strategy) of tiny distillations, each
a real `mdist distill` process logging to a real sqlite MLflow store as a child of the sweep's parent run;
its table's values checked against the exported students (loaded with transformers) and each run's summary.json."""
from __future__ import annotations

import json
import math
import statistics

import pytest

from mdist.cli import main

LAYERS, STRATEGIES, STEPS = ("1", "2"), ("monoshot", "hinton"), 2


def sweep_args(teacher, heldout, out) -> list[str]:
    return ["sweep", "--recipe", "tiny", "--grid", f"students.layers={','.join(LAYERS)}", "--grid", f"strategy={','.join(STRATEGIES)}",
            "--set", "students.groups={en: [en]}", "--set", f"teacher.path={teacher}", "--set", f"train.steps={STEPS}",
            "--set", f"train.eval_every={STEPS}", "--set", f"data.heldout={{en: ['{heldout}']}}", "--out", str(out)]


@pytest.fixture(scope="module")
def sweep(tiny_teacher_dir, synthetic_docs, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    heldout = root / "heldout-en.txt"
    heldout.write_text("\n".join(synthetic_docs["en"][-6:]) + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(sweep_args(tiny_teacher_dir, heldout, root / "sweep")) == 0
    return root / "sweep", sweep_args(tiny_teacher_dir, heldout, root / "sweep")


def client_of(out):
    from mdist.tracking import client_for

    return client_for(f"sqlite:///{out / 'mlflow.db'}")


def test_the_parent_has_one_finished_child_per_grid_point(sweep):
    out, _ = sweep
    parent_id = json.loads((out / "sweep.json").read_text())["parent_run_id"]
    client = client_of(out)
    children = client.search_runs([client.get_run(parent_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert all(c.data.tags.get("mdist.sweep_run_id") == parent_id and "mdist.distillation_run_id" not in c.data.tags for c in children)
    assert sorted(c.info.run_name for c in children) == ["00-1-monoshot", "01-1-hinton", "02-2-monoshot", "03-2-hinton"]
    assert {(c.data.params["students.layers"], c.data.params["strategy"]) for c in children} == {(l, s) for l in LAYERS for s in STRATEGIES}
    assert all(c.info.status == "FINISHED" for c in children) and client.get_run(parent_id).info.status == "FINISHED"


def test_each_childs_table_row_matches_its_exported_student_and_summary(sweep):
    from transformers import AutoModelForMaskedLM

    from mdist.tracking.runs import sweep_rows

    out, _ = sweep
    client = client_of(out)
    grid, rows = sweep_rows(client, json.loads((out / "sweep.json").read_text())["parent_run_id"])
    assert grid == ["students.layers", "strategy"] and len(rows) == 4
    for row in rows:
        summary = json.loads((out / "runs" / row["run"] / "summary.json").read_text())
        student = AutoModelForMaskedLM.from_pretrained(summary["students"]["en"]["path"])
        assert row["student params"] == sum(p.numel() for p in student.parameters())
        assert student.config.num_hidden_layers == int(row["students.layers"])
        assert row["final loss"] == pytest.approx(summary["final_losses"]["en/en"]["loss"], rel=1e-9)
        last = summary["heldout"]["en/en"][-1]
        assert last["step"] == STEPS and math.isfinite(row["held-out ppl"]) and row["held-out ppl"] == pytest.approx(last["ppl"], rel=1e-12)
    by_depth = {row["students.layers"]: row["student params"] for row in rows}
    assert by_depth["2"] > by_depth["1"]


def test_each_child_logs_its_memory_plan(sweep):
    """Every distillation logs `mdist plan`'s plan of itself; its student parameters (the memory model's count)
    equal the run's own count of its real students, and deeper students plan more."""
    from mdist.tracking.runs import sweep_rows

    out, _ = sweep
    client = client_of(out)
    _, rows = sweep_rows(client, json.loads((out / "sweep.json").read_text())["parent_run_id"])
    planned = {}
    for row in rows:
        params = client.get_run(row["run_id"]).data.params
        assert params["plan.gpus"] == "1" and params["plan.student_params"] == params["run.student_parameters"]
        assert float(params["plan.configured.total_gib"]) > 0
        planned[row["students.layers"], row["strategy"]] = int(params["plan.student_params"])
    for strategy in STRATEGIES:
        assert planned["1", strategy] < planned["2", strategy]


def test_each_child_shows_its_median_throughput_and_its_own_peak_memory(sweep):
    import torch

    from mdist.tracking.runs import sweep_rows

    out, _ = sweep
    client = client_of(out)
    _, rows = sweep_rows(client, json.loads((out / "sweep.json").read_text())["parent_run_id"])
    for row in rows:
        speeds = sorted(client.get_metric_history(row["run_id"], "tokens_per_s"), key=lambda m: m.step)
        assert len(speeds) == STEPS and row["tokens/s"] == statistics.median(m.value for m in speeds[1:]) > 0
        assert row["peak kind"] == ("gpu" if torch.cuda.is_available() else "rss") and 0.05 < row["peak GiB"] < 4


def test_runs_sweep_prints_the_table_and_plots_three_panels_per_strategy(sweep, tmp_path, capsys):
    import matplotlib.image

    out, _ = sweep
    assert main(["runs", "--sweep", str(out), "--out", str(tmp_path / "sweep.md"), "--plot", str(tmp_path / "sweep.png")]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "sweep.md").read_text()
    assert table in printed and table.splitlines()[0].startswith("| run | id | status | students.layers | strategy | student params |")
    assert [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:]] == ["00-1-monoshot", "01-1-hinton", "02-2-monoshot", "03-2-hinton"]
    assert f"wrote {tmp_path / 'sweep.png'} (6 series)" in printed  # 3 panels × 2 strategies
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(tmp_path / "sweep.png").shape[:2] == (540, 1800)


def test_a_second_sweep_run_skips_the_done_points_under_the_same_parent(sweep, capsys):
    out, args = sweep
    before = json.loads((out / "sweep.json").read_text())["parent_run_id"]
    assert main(args) == 0
    assert capsys.readouterr().out.count("done, skipped") == 4
    assert json.loads((out / "sweep.json").read_text())["parent_run_id"] == before


@pytest.mark.parametrize("grid, said", [
    ("students.layers", "--grid expects KEY=VALUE[,VALUE...], got 'students.layers'"),
    ("students.layers=1,", "--grid students.layers: an empty value in '1,'"),
    ("students.layers=1,x", "--grid point 01-x (students.layers=x): config key 'students.layers' must be of type int, got 'x'"),
], ids=["no-values", "empty-value", "bad-type"])
def test_a_bad_grid_stops_before_any_run_in_one_line(grid, said, tmp_path, capsys):
    assert main(["sweep", "--recipe", "tiny", "--grid", grid, "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == f"mdist sweep: error: {said}\n"
    assert not (tmp_path / "s").exists()
