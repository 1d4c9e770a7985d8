"""MLM pseudo-perplexity against a hand computation; masking statistics; text and shard inputs."""
from __future__ import annotations

import io
import json
import math
import random
import tarfile

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, XLMRobertaConfig, XLMRobertaForMaskedLM

from mdist.cli import main
from mdist.evaluation.perplexity import IGNORE, mask_tokens, masked_sequences, windows
from mdist.tokenizer import train_xlmr_tokenizer

WORDS = "the a cat dog sees likes small big red old house tree runs sleeps near under with and".split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm")
    tokenizer = train_xlmr_tokenizer(sentences(300, 0), vocab_size=60, out_dir=out)
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=40)
    XLMRobertaForMaskedLM(config).save_pretrained(out)
    return out


def write_shard(path, texts: list[str]) -> None:
    """A webdataset shard: samples `<key>.txt` plus a `<key>.json` member that must be ignored."""
    with tarfile.open(path, "w") as tar:
        for i, text in enumerate(texts):
            for ext, data in (("txt", text.encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def hand_pseudo_perplexity(model_dir, texts: list[str], seed: int) -> tuple[float, int]:
    """Each sequence alone, full float64 logits, -log softmax at the masked positions, exp of the mean."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).double().eval()
    sequences = [tokenizer(t)["input_ids"] for t in texts]  # short texts: one <s> ... </s> window each
    total, count = 0.0, 0
    for inputs, targets in masked_sequences(tokenizer, sequences, model.config.vocab_size, seed):
        with torch.no_grad():
            log_probs = torch.log_softmax(model(inputs[None]).logits[0], dim=-1)
        for position, target in enumerate(targets.tolist()):
            if target != IGNORE:
                total -= log_probs[position, target].item()
                count += 1
    return math.exp(total / count), count


def test_cli_perplexity_matches_hand_computation_on_text_and_shard(model_dir, tmp_path):
    text, shard = sentences(9, 1), sentences(5, 2)
    (tmp_path / "a.txt").write_text("\n".join(text[:4]) + "\n\n  \n" + "\n".join(text[4:]) + "\n")
    write_shard(tmp_path / "b.tar", shard)
    expected, count = hand_pseudo_perplexity(model_dir, text + shard, seed=3)
    for batch_size in ("2", "5"):
        out = tmp_path / f"ppl{batch_size}.json"
        args = ["eval", "perplexity", "--model", str(model_dir), "--files", str(tmp_path / "a.txt"), str(tmp_path / "b.tar")]
        assert main(args + ["--seed", "3", "--lang", "en", "--batch-size", batch_size, "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["pseudo_perplexity"] == pytest.approx(expected, rel=1e-5)
        assert result["masked_tokens"] == count > 0 and result["sequences"] == 14 and result["lang"] == "en"


def test_cli_students_run_evaluates_the_language_student_and_logs_a_child_run(model_dir, tmp_path):
    """`mdist eval perplexity --students RUN --lang tr`: the tr student of the run (not en's), the same
    number as `--model` on its directory, logged as a child of the run's MLflow run."""
    import shutil

    from mlflow.tracking import MlflowClient

    from mdist.tracking import Tracker

    run_dir = tmp_path / "run"
    shutil.copytree(model_dir, run_dir / "students" / "tr")
    shutil.copytree(model_dir, run_dir / "students" / "en")
    en = AutoModelForMaskedLM.from_pretrained(run_dir / "students" / "en")
    with torch.no_grad():
        en.lm_head.bias.add_(torch.linspace(-2, 2, en.config.vocab_size))  # en's student predicts differently
    en.save_pretrained(run_dir / "students" / "en")
    tracker = Tracker(run_dir, experiment="distill")
    summary = {"students": {"tr": {"languages": ["tr"]}, "en": {"languages": ["en"]}}, "mlflow_run_id": tracker.run_id}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "held.txt").write_text("\n".join(sentences(6, 4)) + "\n")
    common = ["eval", "perplexity", "--files", str(tmp_path / "held.txt"), "--seed", "1"]
    results = {}
    for name, args in {"students": ["--students", str(run_dir), "--lang", "tr"], "tr": ["--model", str(run_dir / "students" / "tr")],
                       "en": ["--model", str(run_dir / "students" / "en")]}.items():
        assert main(common + args + ["--out", str(tmp_path / f"{name}.json")]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert results["students"]["pseudo_perplexity"] == results["tr"]["pseudo_perplexity"] != results["en"]["pseudo_perplexity"]
    assert results["students"]["lang"] == "tr"
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = client.get_run(tracker.run_id)
    (child,) = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    assert child.data.metrics["perplexity.tr"] == pytest.approx(results["students"]["pseudo_perplexity"])
    assert child.data.metrics["perplexity.tr.loss"] == pytest.approx(results["students"]["loss"])


def test_masking_is_seeded_and_bert_shaped():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200_000,), generator=g)
    special = torch.rand(200_000, generator=g) < 0.1
    a_in, a_tgt = mask_tokens(ids, special, mask_id=1000, vocab_size=1001, generator=torch.Generator().manual_seed(7))
    b_in, b_tgt = mask_tokens(ids, special, mask_id=1000, vocab_size=1001, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a_in, b_in) and torch.equal(a_tgt, b_tgt)
    chosen = a_tgt != IGNORE
    assert not (chosen & special).any() and torch.equal(a_tgt[chosen], ids[chosen])
    assert chosen.sum() / (~special).sum() == pytest.approx(0.15, abs=0.005)
    masked, kept = (a_in[chosen] == 1000).float().mean(), (a_in[chosen] == ids[chosen]).float().mean()
    assert masked == pytest.approx(0.8, abs=0.01) and kept == pytest.approx(0.1 + 0.1 / 1001, abs=0.01)
    assert torch.equal(a_in[~chosen], ids[~chosen])


def test_long_texts_become_framed_windows_without_loss(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = " ".join(sentences(20, 5))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = windows(tokenizer, [text], length=10)
    assert all(len(p) <= 10 and p[0] == tokenizer.cls_token_id and p[-1] == tokenizer.sep_token_id for p in pieces)
    assert [t for p in pieces for t in p[1:-1]] == ids and len(pieces) == math.ceil(len(ids) / 8)


@pytest.mark.parametrize("name, content, message", [("e.txt", "\n \n", "e.txt: no text"), ("e.tar", None, "e.tar: no sample with a non-empty 'txt' member")])
def test_empty_inputs_are_one_line_errors(model_dir, tmp_path, capsys, name, content, message):
    if content is None:
        with tarfile.open(tmp_path / name, "w"):
            pass
    else:
        (tmp_path / name).write_text(content)
    rc = main(["eval", "perplexity", "--model", str(model_dir), "--files", str(tmp_path / name), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
