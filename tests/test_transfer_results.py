"""What `mdist finetune` leaves behind: written in an order that survives a kill, models that load from
anywhere and after a move, one saved model per few-shot k, provenance, several seeds in one command.

A 2-layer baseline cut from the tiny teacher fine-tunes for one epoch on a dozen synthetic XNLI pairs;
each run takes about a second.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from mdist.baseline import export_baseline
from mdist.cli import main
from mdist.transfer.model import SPEC_FILE, ModelSpec, build_task_model, load_task_model
from mdist.transfer.tasks import get_task
from mdist.transfer.train import predict

LABELS = ("entailment", "neutral", "contradiction")


@pytest.fixture(scope="module")
def setup(tiny_teacher_dir, synthetic_docs, tmp_path_factory):
    """A base model directory and XNLI train / eval / shots files of 16 / 8 / 12 pairs."""
    root = tmp_path_factory.mktemp("results")
    export_baseline(tiny_teacher_dir, 2, "bottom", root / "models" / "base")
    rng = random.Random(0)
    sentences = [s for doc in synthetic_docs["en"][:20] for s in doc.split(" . ") if s]
    for name, n in (("train", 16), ("eval", 8), ("shots", 12)):
        lines = [f"{rng.choice(sentences)}\t{rng.choice(sentences)}\t{rng.choice(LABELS)}" for _ in range(n)]
        (root / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root


def finetune(root: Path, out, *extra: str, model: str | None = None) -> int:
    return main(["finetune", "--task", "xnli", "--strategy", "full-trg", "--model", model or str(root / "models" / "base"), "--trg", "tr",
                 "--train", str(root / "train.tsv"), "--eval", str(root / "eval.tsv"), "--out", str(out),
                 "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--device", "cpu", *extra])


def result_of(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


class Killed(BaseException):
    """Stands for SIGKILL at one point of the run (not an Exception: nothing may catch it)."""


def test_a_kill_while_the_model_is_saved_leaves_no_result_and_a_rerun_is_not_refused(setup, tmp_path, monkeypatch):
    import mdist.transfer.runner as runner

    out = tmp_path / "ft"

    def killed(*args):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(runner, "save_task_model", killed)
        with pytest.raises(Killed):
            finetune(setup, out, "--save-model")
    assert not (out / "result.json").exists()  # today: written before the model, so it claims a finished run
    (out / "model").mkdir(parents=True)  # the unfinished run's model directory, without weights
    (out / "model" / "partial").write_text("x")
    assert finetune(setup, out, "--save-model") == 0  # an unfinished run is run again, not refused
    assert (out / "model" / "task_model.pt").is_file() and not (out / "model" / "partial").exists()
    assert result_of(out)["saved_models"]["zero_shot"] == "model"


def test_result_json_is_replaced_whole_or_not_at_all(setup, tmp_path, monkeypatch):
    out = tmp_path / "ft"
    replace = os.replace

    def killed_at_the_result(src, dst):  # killed between writing result.json's bytes and renaming them into place
        if Path(dst).name == "result.json":
            raise Killed
        replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", killed_at_the_result)
        with pytest.raises(Killed):
            finetune(setup, out)
    assert sorted(p.name for p in out.iterdir() if "result" in p.name) == []  # no result.json, no temporary file left


def test_a_finished_run_is_refused_and_overwrite_removes_its_models(setup, tmp_path, capsys):
    out = tmp_path / "ft"
    assert finetune(setup, out, "--save-model") == 0
    assert finetune(setup, out) == 2
    assert "result.json' exists" in capsys.readouterr().err
    assert finetune(setup, out, "--overwrite") == 0
    assert not (out / "model").exists() and result_of(out)["saved_models"] is None  # no model of another run beside the result


@pytest.mark.parametrize("case", ["result-is-a-directory", "model-is-a-file"])
def test_out_that_cannot_take_the_outputs_is_refused_before_training(setup, tmp_path, capsys, monkeypatch, case):
    import mdist.transfer.runner as runner

    out = tmp_path / "ft"
    out.mkdir()
    (out / "result.json").mkdir() if case == "result-is-a-directory" else (out / "model").write_text("x")
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("trained before --out was checked"))
    assert finetune(setup, out, "--save-model") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out: '" in err and ("is a directory, not a file" in err or "is a file, not a directory" in err), err


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "read-only"])
def test_transfer_table_out_is_checked_before_anything_is_read(tmp_path, capsys, where):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    target = {"a-file": tmp_path, "under-a-file": tmp_path / "afile" / "t.md", "read-only": tmp_path / "ro" / "t.md"}[where]
    if where == "read-only" and os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(SystemExit) as stop:
        main(["transfer-table", "--runs", str(tmp_path / "none"), "--out", str(target)])
    assert stop.value.code == 2
    assert "transfer-table: error: argument --out" in capsys.readouterr().err


def test_saved_models_load_from_elsewhere_after_a_move_and_teach(setup, tmp_path, monkeypatch):
    """Paths typed relative to one working directory; the saved model is then used from another working
    directory, after its run directory moved alone (found by the absolute path) and after the whole
    tree moved (found relative to the spec file): loaded, it scores what result.json says; it teaches."""
    work = tmp_path / "work"
    shutil.copytree(setup / "models", work / "models")
    monkeypatch.chdir(work)
    assert finetune(setup, "ft", "--save-model", model="models/base") == 0
    spec = json.loads((work / "ft" / "model" / SPEC_FILE).read_text())
    assert spec["base"] == str(work / "models" / "base") and spec["base_relative"] == os.path.join("..", "..", "models", "base")
    result = result_of(work / "ft")
    assert result["models"]["trg"] == str(work / "models" / "base")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(work / "ft", elsewhere / "moved-run")
    monkeypatch.chdir(elsewhere)
    assert load_task_model(Path("moved-run/model"), "cpu")[2].base == str(work / "models" / "base")
    assert finetune(setup, "td", "--task-teacher", "moved-run/model", model=str(work / "models" / "base")) == 0
    assert result_of(elsewhere / "td")["strategy"] == "full-trg+td"
    assert result_of(elsewhere / "td")["settings"]["task_teacher"] == str(elsewhere / "moved-run" / "model")

    tree = tmp_path / "tree"
    shutil.move(work, tree)
    shutil.move(elsewhere / "moved-run", tree / "ft")
    model, tokenizer, spec = load_task_model(Path("../tree/ft/model"), "cpu")
    assert spec.base == str(tree / "models" / "base")
    task = get_task("xnli")
    examples = task.read(setup / "eval.tsv")
    predictions = predict(model, task, task.encode(examples, tokenizer, 32), tokenizer.pad_token_id, 8, "cpu")
    assert task.score(examples, predictions)["accuracy"] == pytest.approx(result["zero_shot"]["accuracy"])


def test_every_few_shot_model_is_saved_named_and_usable(setup, tmp_path):
    out = tmp_path / "ft"
    assert finetune(setup, out, "--save-model", "--shots", "4", "8", "--shots-file", str(setup / "shots.tsv"), "--few-shot-epochs", "2") == 0
    result = result_of(out)
    assert result["saved_models"] == {"zero_shot": "model", "few_shot": {"4": "model-4shot", "8": "model-8shot"}}
    task = get_task("xnli")
    examples = task.read(setup / "eval.tsv")
    scores = {}
    for name in ("model", "model-4shot", "model-8shot"):
        model, tokenizer, _ = load_task_model(out / name, "cpu")
        predictions = predict(model, task, task.encode(examples, tokenizer, 32), tokenizer.pad_token_id, 8, "cpu")
        scores[name] = task.score(examples, predictions)["accuracy"]
    assert scores == pytest.approx({"model": result["zero_shot"]["accuracy"], "model-4shot": result["few_shot"]["4"]["accuracy"],
                                    "model-8shot": result["few_shot"]["8"]["accuracy"]})
    weights = [torch.load(out / name / "task_model.pt", weights_only=True)["head.out.weight"] for name in ("model", "model-4shot", "model-8shot")]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])  # three different models
    assert finetune(setup, tmp_path / "td", "--task-teacher", str(out / "model-8shot")) == 0
    assert finetune(setup, tmp_path / "twice", "--save-model", "--shots", "4", "4", "--shots-file", str(setup / "shots.tsv")) == 2  # one model per k


def test_result_records_its_inputs_and_every_setting(setup, tmp_path):
    out = tmp_path / "ft"
    assert finetune(setup, out, "--shots", "4", "--shots-file", str(setup / "shots.tsv"), "--few-shot-epochs", "1", "--train-limit", "12") == 0
    result = result_of(out)
    for name, n in (("train", 12), ("eval", 8), ("shots", 12)):
        record = result["inputs"][name]
        path = setup / f"{name}.tsv"
        assert record == {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "examples": n}
    assert result["inputs"]["train_labels"] is None
    settings = result["settings"]
    assert {k: settings[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "warmup", "max_grad_norm", "seed", "train_limit", "eval_limit")} == {
        "epochs": 1, "batch_size": 8, "lr": 2e-5, "weight_decay": 0.05, "warmup": 0.1, "max_grad_norm": 1.0, "seed": 42, "train_limit": 12, "eval_limit": None}
    assert settings["few_shot"]["shots"] == [4] and settings["few_shot"]["epochs"] == 1
    model = build_task_model(ModelSpec("xnli", str(setup / "models" / "base")), "cpu")[0]
    assert result["trainable_parameters"] == sum(p.numel() for p in model.parameters())  # full-trg: every parameter trains


def test_siqa_provenance_names_the_labels_file_it_read(tmp_path):
    siqa = tmp_path / "train.jsonl"
    siqa.write_text('{"context": "c", "question": "q", "answerA": "a", "answerB": "b", "answerC": "c"}\n')
    (tmp_path / "train-labels.lst").write_text("1\n")
    assert get_task("xcopa").labels_file(siqa) == tmp_path / "train-labels.lst"
    assert get_task("xnli").labels_file(tmp_path / "x.tsv") is None


def test_several_seeds_in_one_command(setup, tmp_path, capsys):
    out = tmp_path / "ft"
    assert finetune(setup, out, "--seeds", "1", "2", "--shots", "4", "--shots-file", str(setup / "shots.tsv"), "--few-shot-epochs", "1") == 0
    seeds = {seed: result_of(out / f"seed-{seed}") for seed in (1, 2)}
    assert seeds[1]["settings"]["few_shot"]["drawn"] != seeds[2]["settings"]["few_shot"]["drawn"]  # the draw follows the seed: still pooled
    assert {seed: r["settings"]["seed"] for seed, r in seeds.items()} == {1: 1, 2: 2}
    assert seeds[1]["fit"]["loss"] != seeds[2]["fit"]["loss"]  # different draws, really different runs
    assert not (out / "result.json").exists()
    scores = [r["zero_shot"]["accuracy"] for r in seeds.values()]
    assert main(["transfer-table", "--runs", str(out)]) == 0  # one cell, both seeds pooled
    assert f"| base · full-trg | {statistics.mean(scores):.3f} ± {statistics.stdev(scores):.3f} (n=2) |" in capsys.readouterr().out
    assert finetune(setup, out, "--seeds", "3", "3") == 2
    assert "--seeds must differ" in capsys.readouterr().err
