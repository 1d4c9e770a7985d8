"""`mdist distill` end to end on the CPU: outputs, MLflow, export without mdist, shards (bad input: test_bad_input.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdist.cli import main
from mdist.config import load_run_config
from mdist.engine import without_launcher_variables
from mdist.run import run_distillation

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = without_launcher_variables(os.environ)  # its own rendezvous (a free port), apart from in-process runs
    return subprocess.run([sys.executable, "-m", "mdist", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = run_distillation(load_run_config("tiny", ["train.steps=3", "train.save_every=2"]), out)
    return out, summary


def test_outputs_and_summary(tiny_run):
    out, summary = tiny_run
    written = json.loads((out / "summary.json").read_text())
    assert written["steps"] == 3 and 0 < written["tokens"] <= 3 * 2 * 4 * 32  # steps x languages x batch x length
    assert set(written["students"]) == {"en", "tr"}
    for pair in ("en/en", "tr/tr"):
        assert {"mlm", "kl", "hid", "att", "emb", "loss"} <= set(written["final_losses"][pair])
    assert written["mlflow_run_id"]
    assert (out / "checkpoints" / "step2").is_dir() and (out / "checkpoints" / "step3").is_dir()


def test_mlflow_run_has_params_and_step_metrics(tiny_run):
    from mlflow.tracking import MlflowClient

    out, summary = tiny_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["strategy"] == "monoshot"
    assert run.data.params["train.steps"] == "3"
    history = client.get_metric_history(run.info.run_id, "tr/tr/att")
    assert [m.step for m in history] == [0, 1, 2]
    assert {"en/en/mlm", "en/en/kl", "lr", "tokens_per_s"} <= set(run.data.metrics)
    assert run.info.status == "FINISHED"
    # artifacts live in the run directory, not in ./mlruns of whatever directory the process ran in
    assert client.get_experiment(run.info.experiment_id).artifact_location == (out / "mlartifacts").resolve().as_uri()


def test_export_loads_without_mdist(tiny_run):
    out, _ = tiny_run
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer\n"
        f"m = AutoModelForMaskedLM.from_pretrained({str(out / 'students' / 'tr')!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(out / 'students' / 'tr')!r})\n"
        "x = t(['deneme'], return_tensors='pt')\n"
        "print(m(**x).logits.shape[-1], m.config.num_hidden_layers, 'mdist' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    vocab, layers, imported = done.stdout.split()
    assert int(layers) == 2 and imported == "False"
    # shared embeddings and tied head: both students export the same embedding matrix
    en = load_file(out / "students" / "en" / "model.safetensors")
    tr = load_file(out / "students" / "tr" / "model.safetensors")
    key = "roberta.embeddings.word_embeddings.weight"
    torch.testing.assert_close(en[key], tr[key], rtol=0, atol=0)


def test_joint_update_and_other_strategies(tmp_path):
    summary = run_distillation(
        load_run_config("tiny", ["train.steps=2", "train.update=joint", "strategy=monoalignment", "students.groups={en_tr: [en, tr]}"]), tmp_path
    )
    assert set(summary["final_losses"]) == {"en_tr/en", "en_tr/tr"}


def test_text_files_and_cli(tmp_path):
    for lang in ("en", "tr"):
        (tmp_path / f"{lang}.txt").write_text("\n\n".join(f"{lang} sentence number {i} with some words" for i in range(60)) + "\n")
    done = _cli(
        "distill", "--recipe", "tiny", "--out", str(tmp_path / "out"), "--set", "train.steps=2", "--set", "data.kind=text",
        "--set", f"data.text={{en: [{tmp_path}/en.txt], tr: [{tmp_path}/tr.txt]}}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "students" / "en" / "config.json").is_file()


def test_shards_source(tmp_path, tiny_teacher_dir):
    text_dir = tmp_path / "text"
    text_dir.mkdir()
    for lang in ("en", "tr"):
        (text_dir / f"{lang}.txt").write_text("\n\n".join(f"{lang} document {i} has words and more words" for i in range(80)) + "\n")
        assert main(["prep", "--lang", lang, "--input", str(text_dir / f"{lang}.txt"), "--out", str(tmp_path / "shards"), "--docs-per-shard", "20", "--no-progress"]) == 0
    cfg = load_run_config("tiny", ["train.steps=2", "data.kind=shards", f"data.shards={tmp_path / 'shards'}", f"teacher.path={tiny_teacher_dir}", "data.num_workers=0"])
    summary = run_distillation(cfg, tmp_path / "out")
    assert summary["steps"] == 2


def test_nan_stops_with_step_student_and_term_and_keeps_checkpoint(tmp_path, monkeypatch):
    import mdist.losses as losses

    original = losses.hidden_mse
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = original(*args, **kwargs)
        return value * float("nan") if calls["n"] > 8 else value  # 2 hid + 1 emb calls per (student, language)

    monkeypatch.setattr(losses, "hidden_mse", poisoned)
    from mdist.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError) as err:
        run_distillation(load_run_config("tiny", ["train.steps=4", "train.save_every=1"]), tmp_path)
    text = str(err.value)
    assert "step 1: student 'en' on language 'en'" in text and "loss term 'emb'" in text  # the 9th call: step 1, en's emb
    assert "last good checkpoint" in text and "step1" in text


def test_xlmr_xl_family_teacher(tmp_path, synthetic_docs):
    """A pre-LayerNorm XLM-R XL teacher (the scaled-up family) distils and exports like XLM-R."""
    from transformers import AutoModelForMaskedLM, XLMRobertaXLConfig, XLMRobertaXLForMaskedLM

    from mdist.tokenizer import train_xlmr_tokenizer

    teacher = tmp_path / "xl-teacher"
    tokenizer = train_xlmr_tokenizer((d for docs in synthetic_docs.values() for d in docs), 300, teacher, 62)
    config = XLMRobertaXLConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id, type_vocab_size=1,
    )
    XLMRobertaXLForMaskedLM(config).save_pretrained(str(teacher))
    summary = run_distillation(load_run_config("tiny", [f"teacher.path={teacher}", "train.steps=2"]), tmp_path / "run")
    assert summary["final_losses"]["tr/tr"]["att"] > 0  # Q/K captured from the XL attention too
    student = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "run" / "students" / "tr"))
    assert type(student).__name__ == "XLMRobertaXLForMaskedLM" and student.config.num_hidden_layers == 2
