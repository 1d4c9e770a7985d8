"""Benchmarks: the throughput and kernel smoke runs (with the GPU machine's missing packages absent), the FLOP formula, the shared recording."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mdist.engine import without_launcher_variables
from mdist.memory import KEPT

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmark_module(monkeypatch):
    """Import a benchmark script by path (scripts import `recording` from their own folder)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def gpu_machine_env(tmp_path) -> dict:
    """The environment of the lent GPU machine, as far as imports go: no deepspeed, mlflow, webdataset
    or bert-score there (a sitecustomize makes importing them fail), so the GPU benchmarks must not need them."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nfor name in ('deepspeed', 'mlflow', 'webdataset', 'bert_score'):\n    sys.modules[name] = None\n"
    )
    return dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))


def test_throughput_smoke_prints_every_row(gpu_machine_env):
    env = gpu_machine_env
    # one batch size: every variant, 1 and 2 students (each compiled variant compiles per row: CI time)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "throughput.py"), "--smoke", "--batches", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if re.match(r"\| \d{4}-", line)]
    got = {(cells[3].strip(), cells[4].strip(), cells[5].strip()) for cells in rows}
    steps = ("floor", "mdist (triton)", "mdist (triton) + fused encoder", "floor + compile", "mdist (triton) + compile", "naive HF")
    want = {(step, "2 × 24", str(students)) for step in steps for students in (1, 2)}
    assert got == want and len(rows) == len(want)
    for cells in rows:
        assert cells[1].strip().endswith(" cores")  # the CPU's name, not a step's
        assert float(cells[6].replace(",", "")) > 0 and float(cells[7]) > 0  # tokens/s, step ms


def test_throughput_profile_splits_a_step_by_category(gpu_machine_env, benchmark_module):
    args = ["--smoke", "--variants", "mdist", "--batches", "2", "--students", "1", "--profile"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "throughput.py"), *args], capture_output=True, text=True, env=gpu_machine_env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    throughput = benchmark_module("throughput")
    table = dict(re.findall(r"^\| ([^|]+?) \| ([0-9.]+) \|$", done.stdout, re.MULTILINE))
    categories = [name for name, _ in throughput.PROFILE_CATEGORIES] + ["elementwise, reductions, other"]
    assert set(table) == {*categories, "all"}
    assert float(table["all"]) == pytest.approx(sum(float(table[c]) for c in categories), abs=0.1 * len(categories))
    assert float(table["all"]) > 0


def test_kernels_smoke_agrees_with_references(gpu_machine_env):
    env = gpu_machine_env
    done = subprocess.run([sys.executable, str(BENCHMARKS / "loss_kernels.py")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.findall(r"(\w+) smoke: +fused (\S+) reference (\S+)", done.stdout)
    assert {kernel for kernel, _, _ in found} == {"attention", "vocab", "hidden"}
    for kernel, fused, ref in found:
        assert float(fused) == pytest.approx(float(ref), rel=1e-5), kernel


def test_flop_formula_on_a_hand_computed_case(benchmark_module):
    throughput = benchmark_module("throughput")
    # d=2, F=4, L=8, V=10, 1 layer: 2·(4·4 + 2·2·4) + 4·8·2 + 2·(4 + 20)·0.15 = 64 + 64 + 7.2
    assert throughput.forward_flops_per_token(1, 2, 4, 8, 10) == pytest.approx(135.2)
    shapes = throughput.Shapes(teacher_layers=2, student_layers=1, hidden=2, heads=1, ffn=4, vocab=10, seq_len=8)
    # teacher: 2·64 + 2·64 + 7.2 = 263.2; student ×3: 3 · 135.2 = 405.6
    assert throughput.step_flops_per_token(shapes) == pytest.approx(263.2 + 405.6)


def test_recording_appends_one_table(benchmark_module, tmp_path):
    recording = benchmark_module("recording")
    assert re.fullmatch(r"([0-9a-f]{4,40}(-dirty)?|unknown)", recording.git_commit())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", recording.utc_stamp())
    path = recording.append_table("T", ("a", "b"), [[1, "x"], [2, "y"]], path=tmp_path / "R.md")
    assert path.read_text() == "\n### T\n\n| a | b |\n|---|---|\n| 1 | x |\n| 2 | y |\n"


def test_tracking_cost_ratios_pair_each_run_with_its_rounds_baseline(benchmark_module):
    tracking_cost = benchmark_module("tracking_cost")
    times = {"untracked": [{"run": 11.0, "loop": 10.0, "cpu": 20.0}, {"run": 21.0, "loop": 20.0, "cpu": 40.0}, {"run": 11.0, "loop": 10.0, "cpu": 20.0}],
             "sqlite": [{"run": 12.0, "loop": 10.5, "cpu": 21.0}, {"run": 23.0, "loop": 21.0, "cpu": 41.0}, {"run": 13.0, "loop": 12.0, "cpu": 22.0}]}
    rows = {row[5]: row for row in tracking_cost.table_rows(times, ["d", "dev", "c", 400, 1])}
    # per round 1.05, 1.05, 1.20: median 1.05 (the ratio of the medians, 12.0 / 10.0, would say 1.20);
    # whole calls 12/11, 23/21, 13/11 = 1.091, 1.095, 1.182: median 1.095
    assert rows["sqlite"][6:] == [3, "13.0", "12.0", "22.0", "", "1.050", "1.050–1.200", "1.095", "met"]
    assert rows["untracked"][11:] == ["1.000", "", "1.000", ""]
    times["sqlite"][1]["loop"] = 23.0  # round 2 at 1.15: the median round is over the target
    assert tracking_cost.table_rows(times, ["d", "dev", "c", 400, 1])[1][-1] == "missed"


def test_tracking_cost_smoke_runs_a_niced_server_row():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "tracking_cost.py"), "--steps", "3", "--rounds", "1", "--log-every", "1",
                           "--modes", "server, no jobs, nice 19", "--no-record"], capture_output=True, text=True, timeout=300,
                          env=without_launcher_variables(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if re.match(r"\| \d{4}-", line)]
    assert [cells[5].strip() for cells in rows] == ["untracked", "server, no jobs, nice 19"]
    assert float(rows[1][10]) > 0  # the server answered this run's requests


def test_memory_model_zero3_measurement_matches_the_model(benchmark_module):
    """The measurement README's "within 0.2 %" quotes, on its ZeRO-3 path (students and teacher, 2 CPU
    ranks): it builds what `mdist distill` builds (it once crashed there: nested GatheredParameters),
    and every category's measured bytes per rank are within 0.2 % of the model; what a student's forward
    and loss save for the backward, within 5 % (today 0.979). The teacher is held
    partitioned: each rank holds half of it plus the gathered MLM decoder, not all of it."""
    memory_model = benchmark_module("memory_model")
    (row,) = memory_model.run_measurements([(3, True)])
    assert row["world"] == 2 and row["stage"] == 3 and row["teacher_zero3"]
    for category, model in row["model"].items():
        assert abs(row["measured"][category] / model - 1) < 2e-3, (category, row["measured"][category], model)
    assert row["measured"]["teacher"] < 0.75 * row["whole_teacher_bytes"]
    # what one student's forward and loss save for the backward: the plan's activations + loss terms + logits
    assert abs(row["saved"]["measured"] / row["saved"]["model"] - 1) < 0.05, row["saved"]


def test_step_peak_with_every_transient_is_the_plans_total_at_zero_2_and_3(benchmark_module, tmp_path):
    """`mdist distill`'s own loop on 2 CPU ranks with a 50 000-entry vocabulary (the tied embedding/decoder the
    largest tensor, as at real size): the step's measured peak (tensors alive at its start + the profiler's
    allocation peak above them) is within 8 % of the plan's total. The peak is where the plan puts it: at
    ZeRO 2, DeepSpeed's two whole reduce buckets and the head's gradients; at ZeRO 3, the head's gradient and
    its flat copies. Without the head-gradient term the ZeRO-2 plan falls 12.5 % short of the measured peak; with
    the buckets sized by the parameters (the model before) it was less than half of it. The ZeRO-3 teacher's
    loading (its own profile) peaks within 10 % of the plan's building figure (3·V·D·t alone: 16 % short)."""
    memory_model = benchmark_module("memory_model")
    rows = memory_model.measure_step_peaks([(2, 128), (3, 256)], tmp_path)
    for row in rows:
        steps = sum(row["plan"][part] for part in KEPT) + row["plan"]["step peak"]
        assert abs(row["measured"] / steps - 1) < 0.08, row
    zero2, zero3 = rows
    head = memory_model.STEP_PEAK_VOCAB * 4  # bytes per unit of student width
    assert [size for size, _ in zero2["at_peak"][:2]] == [4 * 50_000_000] * 2  # two fp32 buckets of 5e7 elements
    assert {size for size, _ in zero2["at_peak"][2:]} == {head * 128}
    assert sum(size for size, _ in zero3["at_peak"][:3]) >= 3 * head * 256 == zero3["plan"]["head gradients"]
    building = zero3["before_building"] + zero3["building_above"]
    assert abs(building / zero3["plan"]["building"] - 1) < 0.10, (building, zero3["plan"]["building"], zero3["building_at_peak"])


def test_gpu_acceptance_dry_run_runs_every_step(tmp_path):
    """The GPU call's script, every step on the CPU at tiny shapes: no step may die on an import or a
    path, the production path's runs (stopped and resumed, two students each way) finish, and nothing
    is recorded."""
    root = BENCHMARKS.parent
    results = (BENCHMARKS / "RESULTS.md").read_bytes()
    env = dict(os.environ, MDIST_GPU_DRY_RUN="1", PYTHON=sys.executable, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_acceptance.sh"), str(tmp_path / "out")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert done.returncode == 0, log[-4000:]
    assert "=== done" in log and ", 0 step(s) failed" in log, log[-4000:]
    runs = re.findall(r"^\| [^|]+\| [^|]+\| [^|]+\| (stop \+ resume|two students) \| .*\| (sequential|joint) \|", log, re.M)
    assert runs == [("stop + resume", "sequential"), ("two students", "sequential"), ("two students", "joint")], log[-4000:]
    assert len(list((tmp_path / "out" / "production").glob("*/summary.json"))) == 3
    assert (BENCHMARKS / "RESULTS.md").read_bytes() == results
