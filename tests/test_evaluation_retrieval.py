"""Retrieval end to end: real Tatoeba tur-eng with a tiny model, and the `mdist eval` command line."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

from mdist.cli import main
from mdist.evaluation.retrieval import evaluate_retrieval
from mdist.tokenizer import train_xlmr_tokenizer
from mdist.tracking import Tracker

TATOEBA = Path(__file__).parents[2] / "shared/data/tatoeba"
KEYS = [f"layer_{k}" for k in range(4)] + ["all", "every_second_odd", "every_second_even", "top4", "middle4", "bottom4"]
WORDS = "ev kedi köpek büyük house cat dog big sees likes Tom Mary the a güzel".split()


def tiny_model(out: Path, corpus: list[str], seed: int = 0) -> Path:
    """A random 3-layer XLM-R with a tokenizer trained on `corpus`, saved as one HF directory."""
    tokenizer = train_xlmr_tokenizer(corpus, vocab_size=300, out_dir=out)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130, initializer_range=0.3)
    XLMRobertaForMaskedLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def parallel(tmp_path_factory):
    """Synthetic line-aligned files (the 'translation' is the sentence reversed) and a tiny model."""
    root = tmp_path_factory.mktemp("parallel")
    rng = random.Random(0)
    src = [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) for _ in range(40)]
    (root / "q.tr").write_text("\n".join(src) + "\n", encoding="utf-8")
    (root / "c.en").write_text("\n".join(" ".join(reversed(s.split())) for s in src) + "\n", encoding="utf-8")
    return root, tiny_model(root / "model", src * 10)


@pytest.mark.skipif(not TATOEBA.is_dir(), reason="shared Tatoeba data not present")
def test_tatoeba_tur_eng_end_to_end(tmp_path):
    tur, eng = TATOEBA / "tatoeba.tur-eng.tur", TATOEBA / "tatoeba.tur-eng.eng"
    corpus = tur.read_text(encoding="utf-8").splitlines() + eng.read_text(encoding="utf-8").splitlines()
    model = tiny_model(tmp_path / "model", corpus)
    result = evaluate_retrieval(model, model, tur, eng, batch_size=64, limit=200)
    assert list(result) == ["cosine", "bertscore", "n", "layer_sets"] and result["n"] == 200
    assert list(result["cosine"]) == KEYS and list(result["bertscore"]) == KEYS
    assert all(0 <= acc <= 1 for score in ("cosine", "bertscore") for acc in result[score].values())
    # Shared pieces (names, numbers, punctuation) make even a random model beat chance (1/200) clearly.
    assert result["bertscore"]["layer_0"] > 0.05


def test_cli_retrieval_writes_json_and_png_and_plot_merges(parallel, tmp_path, capsys):
    root, model = parallel
    args = ["eval", "retrieval", "--src-model", str(model), "--trg-model", str(model), "--src-file", str(root / "q.tr"), "--trg-file", str(root / "c.en")]
    assert main(args + ["--out", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.png"), "--batch-size", "7"]) == 0
    assert main(args + ["--out", str(tmp_path / "b.json"), "--limit", "20", "--device", "cpu"]) == 0
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert a["n"] == 40 and b["n"] == 20 and list(a["bertscore"]) == KEYS
    assert a["layer_sets"]["every_second_odd"] == [1, 3] and a["layer_sets"]["every_second_even"] == [2]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "plot", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "ab.png")]) == 0
    assert (tmp_path / "ab.png").stat().st_size > 10_000
    assert "bertscore: layer_0=" in capsys.readouterr().out


def test_cli_students_run_logs_a_child_of_its_mlflow_run(parallel, tmp_path):
    root, model = parallel
    run_dir = tmp_path / "run"
    for name in ("tr", "en"):
        shutil.copytree(model, run_dir / "students" / name)
    tracker = Tracker(run_dir, experiment="distill")
    summary = {"students": {"tr": {"languages": ["tr"]}, "en": {"languages": ["en"]}}, "mlflow_run_id": tracker.run_id}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "tr.json"
    assert main(["eval", "retrieval", "--students", str(run_dir), "--lang", "tr", "--src-file", str(root / "q.tr"), "--trg-file", str(root / "c.en"), "--out", str(out)]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = client.get_run(tracker.run_id)
    (child,) = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    logged = child.data.metrics
    assert logged["retrieval.tr.bertscore.top4"] == json.loads(out.read_text())["bertscore"]["top4"]
    assert len([k for k in logged if k.startswith("retrieval.tr.")]) == 2 * len(KEYS)


@pytest.mark.parametrize(
    "content, message",
    [(("a\nb\n", "a\n"), "has 2 lines but"), (("a\n\nb\n", "a\nb\nc\n"), "q.tr:2: empty line"), (("", ""), "q.tr: file is empty")],
)
def test_cli_reports_bad_files_in_one_line(parallel, tmp_path, capsys, content, message):
    _, model = parallel
    (tmp_path / "q.tr").write_text(content[0])
    (tmp_path / "c.en").write_text(content[1])
    rc = main(["eval", "retrieval", "--src-model", str(model), "--trg-model", str(model), "--src-file", str(tmp_path / "q.tr"), "--trg-file", str(tmp_path / "c.en"), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_cli_needs_models_or_students(parallel, tmp_path, capsys):
    root, _ = parallel
    rc = main(["eval", "retrieval", "--src-file", str(root / "q.tr"), "--trg-file", str(root / "c.en"), "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "--students RUN_DIR and --lang" in capsys.readouterr().err
