"""`mdist demo`: the method's point shown on the CPU in a few minutes, with no network or external files.

1. a synthetic en/tr corpus with real parallel structure (`data.synthetic`);
2. a tiny multilingual teacher pre-trained with MLM and translation alignment (`demo_teacher`), so that
   it is cross-lingual the way XLM-R is;
3. MonoShot distillation into one student per language (the real `mdist distill` path), and beside it
   the no-alignment baseline: students of the same size trained on the same monolingual text with MLM
   only, from random weights and without shared embeddings (no teacher signal);
4. retrieval on held-out translation pairs: Turkish queries among English candidates, the teacher
   encoding both sides, each student pair its own language;
5. zero-shot transfer (MonoShot's FULL-TRG): the tr model is fine-tuned on English NER sentences and
   tags Turkish ones (the real `mdist finetune` path), over several fine-tuning seeds.
Everything runs with a fixed thread count and deterministic kernels, so two runs print the same table.
The numbers are stored in `summary.json` and in the MLflow run.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from mdist.config import load_run_config
from mdist.data.synthetic import SyntheticCorpus
from mdist.demo_teacher import pretrain_teacher
from mdist.evaluation.retrieval import evaluate_retrieval
from mdist.run import run_distillation
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
NO_ALIGNMENT_OVERRIDES = ["strategy=hinton", "loss.weights={mlm: 1.0, kl: 0.0}", "students.init=random", "students.share_embeddings=false"]
NO_ALIGNMENT_DIR = "no-alignment"
TRANSFER_LR = 5e-4  # a rate high enough to learn the tags in a few epochs, low enough not to unlearn the alignment
THREADS = 1  # a fixed count: float sums, hence the printed numbers, depend on it


@dataclass(frozen=True)
class DemoSize:
    """How much the demo trains and evaluates (tests run a smaller one)."""

    pretrain_steps: int = 200
    pairs: int = 300  # held-out translation pairs for retrieval
    ner_train: int = 400
    ner_eval: int = 200
    ner_epochs: int = 6
    seeds: tuple[int, ...] = (0, 1, 2)  # fine-tuning seeds of the zero-shot transfer


@dataclass(frozen=True)
class DemoModel:
    """One row of the demo's table: the models that encode each language, and the distillation run
    whose MLflow store takes its evaluations (as child runs; the teacher's fine-tuning keeps its own)."""

    label: str
    trg: Path  # encodes the Turkish queries; fine-tuned in the transfer
    src: Path  # encodes the English candidates
    run_dir: Path
    mlflow_run_id: str | None
    metric_key: str  # retrieval.<metric_key>.<score>.<representation> in that run
    distilled: bool = True  # False: the teacher, whose fine-tuning is no child of the students' run


@contextmanager
def deterministic_torch(threads: int):
    """Fixed intra-op threads and deterministic kernels for the block; the caller's settings after it.
    On a GPU machine (distillation takes the GPU) cuBLAS needs a fixed workspace to be deterministic,
    and an op without a deterministic CUDA kernel warns instead of stopping the demo."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def run_demo(out_dir: Path, size: DemoSize = DemoSize(), overrides: list[str] = ()) -> dict:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with deterministic_torch(THREADS):
        cfg = load_run_config("tiny", [*DEMO_OVERRIDES, *overrides])
        teacher_dir = pretrain_teacher(cfg, out_dir / "teacher", size.pretrain_steps)
        cfg.teacher.path = str(teacher_dir)
        summary = run_distillation(cfg, out_dir, overwrite=True)  # the demo replaces an earlier demo in OUT
        baseline_cfg = load_run_config("tiny", [*DEMO_OVERRIDES, *overrides, *NO_ALIGNMENT_OVERRIDES])
        baseline_cfg.teacher.path = str(teacher_dir)
        baseline = run_distillation(baseline_cfg, out_dir / NO_ALIGNMENT_DIR, overwrite=True)
        models = {
            "teacher": DemoModel("teacher (multilingual)", teacher_dir, teacher_dir, out_dir, summary["mlflow_run_id"], "teacher", distilled=False),
            "monoshot": DemoModel("MonoShot students", out_dir / "students" / "tr", out_dir / "students" / "en", out_dir, summary["mlflow_run_id"], "students"),
            "no-alignment": DemoModel("no-alignment students", out_dir / NO_ALIGNMENT_DIR / "students" / "tr", out_dir / NO_ALIGNMENT_DIR / "students" / "en",
                                      out_dir / NO_ALIGNMENT_DIR, baseline["mlflow_run_id"], "students"),
        }
        retrieval = retrieval_step(out_dir, models, size.pairs, cfg.train.seed)
        transfer = {key: transfer_step(out_dir, key, model, size, cfg.train.seed) for key, model in models.items()}
    table = format_table({key: model.label for key, model in models.items()}, retrieval, transfer, size)
    summary["demo"] = {"retrieval": retrieval, "chance": 1.0 / size.pairs, "pairs": size.pairs, "transfer": transfer, "table": table,
                       "seconds": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(table)
    print(f"({summary['demo']['seconds']:.0f} s; details in {out_dir / 'summary.json'})")
    return summary


def retrieval_step(out_dir: Path, models: dict[str, DemoModel], pairs: int, seed: int) -> dict:
    """Retrieval of every model on held-out pairs, each logged as an evaluation run under its distillation
    run (named as `mdist eval retrieval` names its metrics)."""
    queries, candidates = SyntheticCorpus(seed=seed).parallel("tr", "en", pairs)
    eval_dir = out_dir / "heldout"
    eval_dir.mkdir(exist_ok=True)
    (eval_dir / "pairs.tr").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (eval_dir / "pairs.en").write_text("\n".join(candidates) + "\n", encoding="utf-8")
    results = {key: evaluate_retrieval(model.trg, model.src, eval_dir / "pairs.tr", eval_dir / "pairs.en") for key, model in models.items()}
    for run_dir in dict.fromkeys(model.run_dir for model in models.values()):
        logged = {key: model for key, model in models.items() if model.run_dir == run_dir}
        tracker = Tracker(run_dir, "mdist-eval", run_name="eval retrieval", parent_run_id=next(iter(logged.values())).mlflow_run_id)
        for key, model in logged.items():
            tracker.log_metrics({f"retrieval.{model.metric_key}.{score}.{rep}": acc for score in ("cosine", "bertscore") for rep, acc in results[key][score].items()}, 0)
        tracker.log_metrics({"retrieval.chance": 1.0 / pairs}, 0)
        tracker.close()
    return results


def write_tagged(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    """PAN-X format: `token<TAB>tag`, a blank line after each sentence."""
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in sentence) + "\n" for sentence in sentences), encoding="utf-8")
    return path


def transfer_step(out_dir: Path, key: str, model: DemoModel, size: DemoSize, seed: int) -> dict:
    """FULL-TRG NER: the tr model fine-tuned on English, scored on Turkish, once per fine-tuning seed."""
    corpus = SyntheticCorpus(seed=seed)
    data = out_dir / "transfer"
    data.mkdir(exist_ok=True)
    train = write_tagged(data / "ner-train-en.tsv", corpus.tagged("en", size.ner_train, split=2))
    evaluation = write_tagged(data / "ner-eval-tr.tsv", corpus.tagged("tr", size.ner_eval, split=3))
    runs = [
        run_transfer(TransferConfig(
            task="ner", strategy="full-trg", src_model=model.src, trg_model=model.trg, train=train, eval=evaluation,
            out=data / f"{key}-seed{s}", src_lang="en", trg_lang="tr", label=f"demo {key}", epochs=size.ner_epochs, batch_size=32, lr=TRANSFER_LR,
            seed=s, distillation_run=model.run_dir if model.distilled else None, distillation_mlflow_run_id=model.mlflow_run_id if model.distilled else None,
        ))
        for s in size.seeds
    ]
    return {"task": "ner", "strategy": "full-trg", "seeds": list(size.seeds),
            "train_f1": [r["train"]["f1"] for r in runs], "zero_shot_f1": [r["zero_shot"]["f1"] for r in runs]}


def mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def format_table(labels: dict[str, str], retrieval: dict, transfer: dict, size: DemoSize) -> str:
    """The demo's result for a reader: one row per model, what each column is, what chance is."""
    seeds = len(size.seeds)
    lines = [
        "Cross-lingual retrieval and zero-shot transfer, Turkish <-> English (synthetic corpus; the students never see parallel text)",
        f"{'model':<24}{'layers':>7}{'retrieval':>11}{'tr NER F1 (zero-shot)':>24}{'en NER F1 (trained)':>22}",
    ]
    for key, label in labels.items():
        cosine = retrieval[key]["cosine"]
        layers = sum(rep.startswith("layer_") for rep in cosine) - 1  # layer_0 is the embedding output
        lines.append(f"{label:<24}{layers:>7}{cosine['all']:>11.2f}{mean_sd(transfer[key]['zero_shot_f1']):>24}{mean_sd(transfer[key]['train_f1']):>22}")
    lines += [
        f"retrieval: accuracy of finding each of {size.pairs} Turkish sentences' translation among {size.pairs} English ones "
        f"(cosine of token vectors mean-pooled over all layers); chance {1 / size.pairs:.3f}.",
        f"NER F1: the tr model fine-tuned on {size.ner_train} English sentences, scored on {size.ner_eval} Turkish ones; "
        f"mean ± sd over {seeds} fine-tuning seed{'s' * (seeds > 1)}; entities LOC and ORG, whose words differ between the languages.",
        "What it shows: MonoShot students, distilled from the multilingual teacher on monolingual text, keep its alignment (retrieval",
        "near the teacher's, zero-shot transfer); no-alignment students (same size and text, MLM without the teacher) lose it.",
    ]
    return "\n".join(lines)
