"""The production path on one GPU: `mdist distill` end to end at XLM-R base shapes, beside the benchmark step.

1. A random teacher with XLM-R base shapes and vocabulary (`throughput.Shapes`: 12 layers, hidden 768,
   250 002 pieces) and a sentencepiece unigram model written piece by piece: every piece but the
   special ones is a word `▁w<i>` of a synthetic corpus, so the tokenizer fills the vocabulary (the
   teacher check passes) and batches draw on all of it.
2. A Zipf-distributed corpus of those words per language, cut into webdataset shards with token ids by
   `mdist prep`.
3. `mdist distill`, one student (en): MonoShot with the fused Triton kernels, the DeepSpeed engine
   (ZeRO 2; bf16 on a GPU), the shard loader with 2 workers, tracking to the run's sqlite store. At
   batch 16 it is stopped with SIGTERM once its first checkpoint is complete and continued with
   `--resume` to the end; at batch 64 it runs through. Then two students (en, tr) with `train.update`
   sequential and joint.
4. Each run's steady-state loop tokens/s (from its journal's `tokens` metric and timestamps, the first
   WARMUP_FRACTION of its steps left out) beside `throughput.py`'s mdist step at the same shapes,
   measured in the same process; target: the loop at least 95 % of the step.

`--dry-run` (or MDIST_GPU_DRY_RUN=1) runs every part on the CPU at tiny shapes, fp32, Triton under its
interpreter, and records nothing: CI runs it so that the GPU call never dies on an import or a path.

    python benchmarks/production_path.py OUT_DIR [--dry-run] [--no-record]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

DRY = "--dry-run" in sys.argv or os.environ.get("MDIST_GPU_DRY_RUN") == "1"
if DRY:  # before mdist.kernels is imported (below): it binds its kernels to the interpreter then
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp
from throughput import SMOKE, VARIANTS, Shapes, measure

ROOT = Path(__file__).resolve().parents[1]
WARMUP_FRACTION = 0.3  # of a run's steps, left out of its steady-state tokens/s (compilation, loader start)
TARGET = 0.95  # the loop's tokens/s against the benchmark step's
HEADER = ("date (UTC)", "device", "commit", "run", "batch × length", "students", "update", "steps", "loop tokens/s",
          "step tokens/s", "loop / step", f"target ≥ {TARGET}")
DRY_SHAPES = Shapes(teacher_layers=2, student_layers=1, hidden=32, heads=2, ffn=64, vocab=1000, seq_len=32, batches=SMOKE.batches)


def write_tokenizer(out: Path, vocab: int, max_length: int):
    """An XLM-R tokenizer of exactly `vocab` ids: <unk>, <s>, </s>, then words ▁w0 … (the HF tokenizer
    adds <pad> and <mask>), saved in `out`; returns it."""
    from sentencepiece import sentencepiece_model_pb2 as sp_model
    from transformers import XLMRobertaTokenizer

    from mdist.tokenizer import SP_MODEL_NAME

    proto = sp_model.ModelProto()
    proto.trainer_spec.model_type = sp_model.TrainerSpec.UNIGRAM
    proto.trainer_spec.vocab_size = vocab - 2
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = 0, 1, 2, -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    for piece, kind in (("<unk>", sp_model.ModelProto.SentencePiece.UNKNOWN), ("<s>", sp_model.ModelProto.SentencePiece.CONTROL),
                        ("</s>", sp_model.ModelProto.SentencePiece.CONTROL)):
        proto.pieces.add(piece=piece, score=0.0, type=kind)
    for i in range(vocab - 5):
        proto.pieces.add(piece=f"\u2581w{i}", score=-float(np.log(i + 2)), type=sp_model.ModelProto.SentencePiece.NORMAL)
    out.mkdir(parents=True, exist_ok=True)
    (out / SP_MODEL_NAME).write_bytes(proto.SerializeToString())
    tokenizer = XLMRobertaTokenizer.from_pretrained(str(out), model_max_length=max_length)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def write_teacher(out: Path, s: Shapes, seed: int = 0) -> Path:
    """A random XLM-R teacher of shapes `s` with its tokenizer, in `out`."""
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    tokenizer = write_tokenizer(out, s.vocab, s.seq_len)
    assert len(tokenizer) == s.vocab, (len(tokenizer), s.vocab)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.teacher_layers, num_attention_heads=s.heads,
                              intermediate_size=s.ffn, max_position_embeddings=s.seq_len + 2, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, type_vocab_size=1)
    XLMRobertaForMaskedLM(config).save_pretrained(str(out))
    return out


def write_corpus(path: Path, words: int, tokens: int, seed: int) -> Path:
    """About `tokens` Zipf-distributed words w0 … w<words-1>, in documents of 50–400 words separated by blank lines."""
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.1, size=tokens) - 1, words - 1)
    docs, start = [], 0
    while start < tokens:
        length = int(rng.integers(50, 400))
        docs.append(" ".join(f"w{r}" for r in ranks[start:start + length]))
        start += length
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def _env() -> dict:
    from mdist.engine import without_launcher_variables

    env = without_launcher_variables(os.environ)
    env.update(TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def mdist(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "mdist", *args], cwd=ROOT, env=_env(), text=True, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"mdist {' '.join(args[:1])} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def prep_shards(out: Path, teacher: Path, langs: list[str], s: Shapes, tokens: int) -> Path:
    shards = out / "shards"
    for i, lang in enumerate(langs):
        text = write_corpus(out / f"{lang}.txt", s.vocab - 5, tokens, seed=i)
        mdist("prep", "--lang", lang, "--input", str(text), "--out", str(shards), "--tokenizer", str(teacher),
              "--docs-per-shard", str(max(1, text.read_text(encoding="utf-8").count("\n\n") // 8)), "--no-progress")
    return shards


def run_settings(teacher: Path, shards: Path, langs: list[str], s: Shapes, batch: int, steps: int, update: str) -> list[str]:
    groups = "{" + ", ".join(f"{lang}: [{lang}]" for lang in langs) + "}"
    sets = [f"teacher.path={teacher}", f"students.groups={groups}", f"students.layers={s.student_layers}", "data.kind=shards",
            f"data.shards={shards}", "data.num_workers=2", f"train.steps={steps}", f"train.batch_size={batch}", f"train.seq_len={s.seq_len}",
            f"train.update={update}", f"train.save_every={max(1, steps // 3)}", f"train.log_every={max(1, steps // 30)}", "train.warmup_steps=1",
            "loss.kernels=triton", "deepspeed.zero_stage=2", "tracking.enabled=true"]
    return ["--recipe", "xlmr-base-monoshot", *[item for value in sets for item in ("--set", value)]]


def distill_stopped_and_resumed(out: Path, settings: list[str], timeout_s: float = 900) -> None:
    """`mdist distill` SIGTERMed once its first checkpoint is complete, then `--resume`d to the end."""
    first = out / "checkpoints" / "latest"
    proc = subprocess.Popen([sys.executable, "-m", "mdist", "distill", *settings, "--out", str(out)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stopped, _ = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0 or "continue with --resume" not in stopped:
        raise RuntimeError(f"the SIGTERMed run exited {proc.returncode} without saving:\n{stopped[-3000:]}")
    resumed = mdist("distill", *settings, "--out", str(out), "--resume")
    if "resuming from" not in resumed.stdout:
        raise RuntimeError(f"--resume did not resume:\n{resumed.stdout[-2000:]}")


def loop_tokens_per_s(out: Path, steps: int) -> float:
    """Steady-state tokens/s of a run: `tokens` over wall time between its logged steps past the warm-up,
    from the run's journal (a resumed run: its last start's records, timed within it)."""
    records = [json.loads(line) for line in (out / "mlflow-queue" / "distill.jsonl").read_text(encoding="utf-8").splitlines()[1:]]
    logged = [(r["step"], r["metrics"]["tokens"], r["timestamp"]) for r in records if r["kind"] == "metrics" and "tokens" in r["metrics"]]
    last_start = max(i for i, (step, _, _) in enumerate(logged) if i == 0 or step <= logged[i - 1][0])  # where a resume began
    window = [row for row in logged[last_start:] if row[0] >= steps * WARMUP_FRACTION]
    if len(window) < 2:
        raise RuntimeError(f"{out}: too few logged steps past the warm-up to time the loop ({len(window)})")
    (_, tokens0, t0), (_, tokens1, t1) = window[0], window[-1]
    return (tokens1 - tokens0) / ((t1 - t0) / 1000)


def check_finished(out: Path, steps: int) -> None:
    from mlflow.tracking import MlflowClient

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    run = client.get_run(summary["mlflow_run_id"])
    history = [m.step for m in client.get_metric_history(run.info.run_id, "tokens")]
    if summary["steps"] != steps or run.info.status != "FINISHED" or len(history) != len(set(history)):
        raise RuntimeError(f"{out}: steps {summary['steps']} of {steps}, MLflow run {run.info.status}, {len(history) - len(set(history))} step(s) logged twice")


def benchmark_step(s: Shapes, students: int, batch: int, update: str, dry: bool) -> float:
    """`throughput.py`'s mdist step at these shapes: tokens/s."""
    args = Namespace(steps=1 if dry else 10, warmup=0 if dry else 3, update=update, optimizer="adamw", profile=False)
    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    return measure(VARIANTS["mdist"], s, ["en", "tr"][:students], batch, "triton", args, device, dtype).tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, nothing recorded (also MDIST_GPU_DRY_RUN=1)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    dry = DRY
    if not dry and not torch.cuda.is_available():
        raise SystemExit("production_path.py needs a CUDA GPU (or --dry-run)")
    s = DRY_SHAPES if dry else Shapes()
    # (label, batch, students, update, steps, stopped and resumed)
    plan = [("stop + resume", s.batches[0], 1, "sequential", 12 if dry else 300, True),
            ("through", s.batches[1], 1, "sequential", 6 if dry else 100, False),
            ("two students", s.batches[0], 2, "sequential", 6 if dry else 60, False),
            ("two students", s.batches[0], 2, "joint", 6 if dry else 60, False)]
    if dry:  # the batch-64 run takes the batch-16 run's path at another size: one process start less in CI
        plan = [entry for entry in plan if entry[0] != "through"]
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = write_teacher(args.out / "teacher", s)
    shards = prep_shards(args.out, teacher, ["en", "tr"], s, tokens=20_000 if dry else 1_500_000)
    stamp, revision, device = utc_stamp(), git_commit(), device_name("cpu" if dry else "cuda")
    print(markdown_header(HEADER), flush=True)
    rows = []
    for label, batch, students, update, steps, stop in plan:
        out = args.out / f"{label.replace(' + ', '-').replace(' ', '-')}-{update}-b{batch}"
        settings = run_settings(teacher, shards, ["en", "tr"][:students], s, batch, steps, update)
        if stop:
            distill_stopped_and_resumed(out, settings)
        else:
            mdist("distill", *settings, "--out", str(out))
        check_finished(out, steps)
        loop, step = loop_tokens_per_s(out, steps), benchmark_step(s, students, batch, update, dry)
        row = [stamp, device, revision, label, f"{batch} × {s.seq_len}", students, update, steps, f"{loop:,.0f}", f"{step:,.0f}",
               f"{loop / step:.2f}", "" if dry else ("met" if loop >= TARGET * step else "missed")]
        print(markdown_row(row), flush=True)
        rows.append(row)
    if not (dry or args.no_record):
        append_table(f"Production path (benchmarks/production_path.py), {stamp}, XLM-R base shapes, `mdist distill` loop against the benchmark step",
                     HEADER, rows)


if __name__ == "__main__":
    main()
