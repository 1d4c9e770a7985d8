"""`mdist demo`: the embedded main job, on the CPU in a few minutes, with no network or external files.

1. a synthetic en/tr corpus with real parallel structure (`data.synthetic`);
2. a tiny multilingual teacher pre-trained with MLM on both languages (plain PyTorch);
3. MonoShot distillation into one student per language (the real `mdist distill` path);
4. retrieval on held-out translation pairs: the teacher encodes both sides; for the students the
   Turkish queries are encoded by the tr student and the English candidates by the en student;
5. zero-shot transfer (MonoShot's FULL-TRG): the tr student is fine-tuned on English NER sentences
   (names tagged, PAN-X file format) and tagged on Turkish ones (the real `mdist finetune` path).
The numbers are whatever the run gives; they are printed next to chance and stored in
`summary.json` and in the MLflow run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

from mdist.config import load_run_config
from mdist.data.masking import MaskingSpec
from mdist.data.synthetic import SyntheticCorpus
from mdist.data.text import TextBatchSource
from mdist.evaluation.retrieval import evaluate_retrieval
from mdist.optim import warmup_linear_decay
from mdist.run import run_distillation, training_documents
from mdist.tokenizer import train_xlmr_tokenizer
from mdist.tracking import Tracker
from mdist.transfer.runner import TransferConfig, run_transfer

DEMO_OVERRIDES = [
    "teacher.tiny={layers: 4, hidden: 64, heads: 4, ffn: 256, vocab: 500, max_positions: 66}",
    "students.layers=2",
    "train.steps=150",
    "train.batch_size=16",
    "train.seq_len=64",
    "train.lr=1e-3",
    "train.warmup_steps=15",
    "train.log_every=10",
]
PRETRAIN_STEPS = 600
HELD_OUT_PAIRS = 300
NER_TRAIN, NER_EVAL, NER_EPOCHS = 400, 200, 6


def pretrain_teacher(cfg, out_dir: Path, steps: int) -> Path:
    """MLM pre-training of a tiny XLM-R on both languages' documents (the multilingual teacher)."""
    docs = training_documents(cfg)
    tokenizer = train_xlmr_tokenizer((d for ds in docs.values() for d in ds), cfg.teacher.tiny.vocab, out_dir, cfg.teacher.tiny.max_positions - 2)
    tiny = cfg.teacher.tiny
    torch.manual_seed(cfg.train.seed)
    model = XLMRobertaForMaskedLM(
        XLMRobertaConfig(
            vocab_size=len(tokenizer), hidden_size=tiny.hidden, num_hidden_layers=tiny.layers,
            num_attention_heads=tiny.heads, intermediate_size=tiny.ffn, max_position_embeddings=tiny.max_positions,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
            type_vocab_size=1,
        )
    )
    source = TextBatchSource.from_documents(
        docs, tokenizer, cfg.train.seq_len, batch_size=32,
        masking=MaskingSpec.from_tokenizer(tokenizer, len(tokenizer)), seed=cfg.train.seed + 1,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = warmup_linear_decay(optimizer, max(1, steps // 10), steps)
    bar = tqdm(range(steps), desc="pretrain teacher", dynamic_ncols=True)
    for _ in bar:
        loss = sum(
            model(input_ids=b.input_ids_BL, attention_mask=b.attention_mask_BL, labels=b.labels_BL).loss
            for b in source.next_batches().values()
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(mlm=f"{float(loss) / len(docs):.3f}")
    model.save_pretrained(str(out_dir))
    return out_dir


def run_demo(out_dir: Path, pretrain_steps: int = PRETRAIN_STEPS, overrides: list[str] = ()) -> dict:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_run_config("tiny", [*DEMO_OVERRIDES, *overrides])
    teacher_dir = pretrain_teacher(cfg, out_dir / "teacher", pretrain_steps)
    cfg.teacher.path = str(teacher_dir)
    summary = run_distillation(cfg, out_dir, overwrite=True)  # the demo replaces an earlier demo in OUT

    queries, candidates = SyntheticCorpus(seed=cfg.train.seed).parallel("tr", "en", HELD_OUT_PAIRS)
    eval_dir = out_dir / "heldout"
    eval_dir.mkdir(exist_ok=True)
    (eval_dir / "pairs.tr").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (eval_dir / "pairs.en").write_text("\n".join(candidates) + "\n", encoding="utf-8")
    students = out_dir / "students"
    results = {
        "teacher": evaluate_retrieval(teacher_dir, teacher_dir, eval_dir / "pairs.tr", eval_dir / "pairs.en"),
        "students (tr -> en)": evaluate_retrieval(students / "tr", students / "en", eval_dir / "pairs.tr", eval_dir / "pairs.en"),
    }
    chance = 1.0 / HELD_OUT_PAIRS
    summary["demo"] = {"retrieval": results, "chance": chance, "pairs": HELD_OUT_PAIRS, "seconds": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    # an evaluation run under the distillation run, named as `mdist eval retrieval` names its metrics
    tracker = Tracker(out_dir, "mdist-eval", run_name="eval retrieval", parent_run_id=summary["mlflow_run_id"])
    for model, result in results.items():
        key = model.split()[0]
        tracker.log_metrics({f"retrieval.{key}.{score}.{rep}": acc for score in ("cosine", "bertscore") for rep, acc in result[score].items()}, 0)
    tracker.log_metrics({"retrieval.chance": chance}, 0)
    tracker.close()
    print(format_table(results, chance))

    transfer = transfer_step(out_dir, summary["mlflow_run_id"], cfg.train.seed)
    summary["demo"]["transfer"] = {k: transfer[k] for k in ("task", "strategy", "train", "zero_shot")}
    summary["demo"]["seconds"] = time.perf_counter() - started
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"Zero-shot NER ({transfer['strategy']}, tr student fine-tuned on English): en train F1 {transfer['train']['f1']:.3f}, "
          f"tr F1 {transfer['zero_shot']['f1']:.3f}")
    return summary


def write_tagged(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    """PAN-X format: `token<TAB>tag`, a blank line after each sentence."""
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in sentence) + "\n" for sentence in sentences), encoding="utf-8")
    return path


def transfer_step(out_dir: Path, mlflow_run_id: str | None, seed: int) -> dict:
    corpus = SyntheticCorpus(seed=seed)
    data = out_dir / "transfer"
    data.mkdir(exist_ok=True)
    cfg = TransferConfig(
        task="ner", strategy="full-trg", src_model=out_dir / "students" / "en", trg_model=out_dir / "students" / "tr",
        train=write_tagged(data / "ner-train-en.tsv", corpus.tagged("en", NER_TRAIN, split=2)),
        eval=write_tagged(data / "ner-eval-tr.tsv", corpus.tagged("tr", NER_EVAL, split=3)),
        out=data / "ner-full-trg", src_lang="en", trg_lang="tr", label="demo", epochs=NER_EPOCHS, batch_size=32, lr=3e-3, seed=seed,
        distillation_run=out_dir, distillation_mlflow_run_id=mlflow_run_id,
    )
    return run_transfer(cfg)


def format_table(results: dict, chance: float) -> str:
    reps = ("layer_0", "all", "top4")
    header = f"{'model':<22}" + "".join(f"{'cos ' + r:>14}" for r in reps) + "".join(f"{'bert ' + r:>14}" for r in reps)
    lines = [f"Retrieval accuracy on held-out synthetic tr->en pairs (chance {chance:.4f})", header]
    for model, result in results.items():
        cells = [result["cosine"].get(r, float("nan")) for r in reps] + [result["bertscore"].get(r, float("nan")) for r in reps]
        lines.append(f"{model:<22}" + "".join(f"{c:>14.3f}" for c in cells))
    last = {m: max((k for k in r["cosine"] if k.startswith("layer_")), key=lambda k: int(k[6:])) for m, r in results.items()}
    lines.append("last layer (cosine): " + ", ".join(f"{m} {results[m]['cosine'][k]:.3f} ({k})" for m, k in last.items()))
    return "\n".join(lines)
