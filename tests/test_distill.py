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
    assert written["steps"] == 3 and written["tokens"] == 3 * 2 * 4 * 32  # steps x languages x batch x length: packed, no padding
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


def test_export_loads_without_mdist(tiny_run, tmp_path):
    """The exported tr student, loaded by plain transformers in a process without mdist, computes the
    logits the trained student computes (the final checkpoint's weights run through mdist's forward)."""
    out, _ = tiny_run
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer\n"
        f"m = AutoModelForMaskedLM.from_pretrained({str(out / 'students' / 'tr')!r}).eval()\n"
        f"t = AutoTokenizer.from_pretrained({str(out / 'students' / 'tr')!r})\n"
        "x = t(['deneme bir iki', 'kelime'], return_tensors='pt', padding=True)\n"
        "tied = m.lm_head.decoder.weight.data_ptr() == m.roberta.embeddings.word_embeddings.weight.data_ptr()\n"
        "with torch.no_grad():\n"
        f"    torch.save({{'ids': x['input_ids'], 'mask': x['attention_mask'], 'logits': m(**x).logits}}, {str(tmp_path / 'hf.pt')!r})\n"
        "print(m.config.num_hidden_layers, tied, 'mdist' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    layers, tied, imported = done.stdout.split()
    assert int(layers) == 2 and tied == "True" and imported == "False"
    _assert_captured_qk_give_eager_attention(out / "students" / "tr")  # the post-LN family (XL: test_xlmr_xl_family_teacher)
    # shared embeddings and tied head: both students export the same embedding matrix
    en = load_file(out / "students" / "en" / "model.safetensors")
    tr = load_file(out / "students" / "tr" / "model.safetensors")
    key = "roberta.embeddings.word_embeddings.weight"
    torch.testing.assert_close(en[key], tr[key], rtol=0, atol=0)

    from mdist.encode import encode
    from mdist.students import StudentGroup
    from mdist.teacher import load_teacher

    cfg = load_run_config("tiny")
    group = StudentGroup(load_teacher(out / "teacher")[0], cfg.students, cfg.teacher.tiny.hidden)
    states = torch.load(out / "checkpoints" / "step3" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    group.load_state_dict(states)
    hf = torch.load(tmp_path / "hf.pt")
    student = group.students["tr"].eval()
    with torch.no_grad():
        got = encode(student, hf["ids"], hf["mask"], torch.zeros_like(hf["ids"]))  # every position "masked": the head runs everywhere
        logits = got.head_hidden_ND @ got.decoder_weight_VD.T + got.decoder_bias_V
    valid = hf["mask"].reshape(-1).bool()
    torch.testing.assert_close(hf["logits"].reshape(-1, logits.shape[-1])[valid], logits[valid], rtol=1e-5, atol=1e-5)


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
        return value * float("nan") if calls["n"] > 5 else value  # 1 hid (all pairs) + 1 emb call per (student, language)

    monkeypatch.setattr(losses, "hidden_mse", poisoned)
    from mdist.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError) as err:
        run_distillation(load_run_config("tiny", ["train.steps=4", "train.save_every=1"]), tmp_path)
    text = str(err.value)
    assert "step 1: student 'en' on language 'en'" in text and "loss term 'emb'" in text  # the 6th call: step 1, en's emb
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
    assert summary["final_losses"]["tr/tr"]["att"] > 0
    student = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "run" / "students" / "tr"))
    assert type(student).__name__ == "XLMRobertaXLForMaskedLM" and student.config.num_hidden_layers == 2
    for path in (teacher, tmp_path / "run" / "students" / "tr"):  # Q/K captured from the XL (pre-LN) attention
        _assert_captured_qk_give_eager_attention(path)


def _assert_captured_qk_give_eager_attention(path: Path) -> None:
    """softmax(QKᵀ/√d) of the Q/K mdist captures inside SDPA equals transformers' eager attention
    probabilities (`output_attentions`), layer by layer, on a padded batch (valid query × key pairs)."""
    from transformers import AutoModelForMaskedLM

    from mdist.capture import ATTENTION_IMPLEMENTATION
    from mdist.encode import encode

    captured = AutoModelForMaskedLM.from_pretrained(str(path), attn_implementation=ATTENTION_IMPLEMENTATION).eval()
    eager = AutoModelForMaskedLM.from_pretrained(str(path), attn_implementation="eager").eval()
    ids = torch.randint(5, captured.config.vocab_size - 1, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = captured.config.pad_token_id
    with torch.no_grad():
        qk = encode(captured, ids, mask, torch.full_like(ids, -100)).qk
        probs = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert len(qk) == len(probs) == captured.config.num_hidden_layers
    valid = mask.bool()[:, None, :, None] & mask.bool()[:, None, None, :]  # (B, 1, Lq, Lk)
    for layer, ((q, k), want) in enumerate(zip(qk, probs)):
        scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        got = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)
        torch.testing.assert_close(got[valid.expand_as(got)], want[valid.expand_as(want)], rtol=1e-5, atol=1e-6, msg=f"{path.name} layer {layer}")


def test_narrow_students_train_export_and_reload(tmp_path):
    """students.hidden 16 < the teacher's 32: the learnable projections W (d' -> d) carry every distilled
    hidden state and train (they move between checkpoints); the exports are 16 wide and load in plain
    transformers (the projections are training-only and not exported)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out = tmp_path / "run"
    summary = run_distillation(load_run_config("tiny", ["students.hidden=16", "students.init=random", "train.steps=2", "train.save_every=1",
                                                        "tracking.enabled=false"]), out)
    assert all(summary["final_losses"][pair]["hid"] > 0 for pair in ("en/en", "tr/tr"))
    states = [torch.load(out / "checkpoints" / f"step{k}" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"] for k in (1, 2)]
    projections = [key for key in states[0] if key.startswith("projections.")]
    assert len(projections) == 2 * 3  # per student: embeddings + 2 layers
    for key in projections:
        assert states[0][key].shape == (32, 16)
        assert not torch.equal(states[0][key], states[1][key]), f"{key} did not train"
    for name in ("en", "tr"):
        model = AutoModelForMaskedLM.from_pretrained(str(out / "students" / name))
        tokenizer = AutoTokenizer.from_pretrained(str(out / "students" / name))
        assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 2
        assert not any("proj" in key for key in model.state_dict())
        with torch.no_grad():
            logits = model(**tokenizer(["bir iki"], return_tensors="pt")).logits
        assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_triton_kernels_distill_like_torch(recipe_teacher_dir, tmp_path):
    """`loss.kernels: triton` (the fused kernels, under the interpreter on the CPU) in a whole MonoShot run
    (all five terms, sequential updates) trains the same students as the PyTorch references."""
    students = {}
    for kernels in ("torch", "triton"):
        out = tmp_path / kernels
        cfg = load_run_config("tiny", [f"teacher.path={recipe_teacher_dir}", "train.steps=2", "train.batch_size=2", "train.seq_len=16",
                                       f"loss.kernels={kernels}", "tracking.enabled=false"])
        summary = run_distillation(cfg, out)
        students[kernels] = ({n: load_file(out / "students" / n / "model.safetensors") for n in ("en", "tr")}, summary["final_losses"])
    (torch_weights, torch_losses), (triton_weights, triton_losses) = students["torch"], students["triton"]
    for pair, terms in torch_losses.items():
        for term, value in terms.items():
            # abs: the float32 PyTorch KL (a difference of log-softmaxes) is itself off by ~1e-7 (test_kernels_linear_distill)
            assert triton_losses[pair][term] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{pair}/{term}"
    for name, weights in torch_weights.items():
        for key, ref in weights.items():
            torch.testing.assert_close(triton_weights[name][key], ref, rtol=1e-4, atol=1e-5, msg=f"{name}/{key}")
