"""XLM-R large and XL at their real shapes, really run on 2 CPU ranks, against `mdist plan`'s memory model.

    python benchmarks/real_size.py                 # the CASES below; XXL by the model alone;
                                                   # appends to RESULTS.md (needs ~15 GiB free and ~10 GB of disk)
    python benchmarks/real_size.py --cases large/auto/256 --no-record

For each size a random-weight teacher of the published shape (mdist.memory.XLMR) is written to a directory
tensor by tensor (fp16 safetensors shards, one per layer: no process ever holds the whole model) with a
sentencepiece tokenizer padded to the full vocabulary. The size's recipe, cut to one one-language student of
STUDENT_LAYERS layers, micro-batch 1 × SEQ_LEN and STEPS steps on synthetic text, ZeRO-3 teacher and
students, the case's `teacher.dtype` (auto: fp32 on CPU ranks; bf16 halves the teacher, which is how XL fits
here) and `dist.memory_gib` = BUDGET_GIB, then either runs through `mdist.run.run_distillation` on 2 CPU
ranks (torchrun, gloo; the teacher built straight into ZeRO-3 partitions by `load_partitioned_teacher`) or,
where the plan says it cannot fit, is refused by `mdist plan --cpu` and `mdist distill` before anything
loads: both refusals are recorded. Students narrower than the teacher (randomly initialised) keep two ranks
under 15 GiB: at the teacher's width large's run peaked at 9.8 GiB per rank.

Measured: each rank's peak resident memory (the kernel's high-water mark, VmHWM) twice: while the run builds
(teacher loading, students, engines), then reset (/proc/self/clear_refs) and through the teacher inference and
student steps, read when the export starts (the export gathers whole students, which the plan does not cover), less
the rank's resident memory right after its imports (interpreter, torch, DeepSpeed: not part of the model,
as the CUDA context is on a GPU). RSS rather than the per-tensor storage count of benchmarks/memory_model.py
because at this size the question is whether the machine holds the run: RSS also sees the transient peaks
(gathered layers, full gradients, logits) and the allocator's slack that live tensors after a step do not.
That count is recorded too (before the export, with the heap's free bytes), and RSS after each building step,
to say which part a miss comes from. CPU ranks of `mdist distill` fix glibc's mmap threshold themselves
(mdist.host_memory), so freed tensors leave RSS as they would leave a GPU's memory.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZES = {"large": ("xlm-roberta-large", "xlmr-large-monoshot"), "xl": ("xlm-roberta-xl", "xlmr-xl-monoshot")}
BUDGET_GIB = 7.5  # per rank: 2 ranks stay within 15 GiB of this 23 GiB machine (XL with a bf16 teacher plans 7.43, building)
STUDENT_LAYERS, SEQ_LEN, STEPS = 3, 128, 2
# size/teacher.dtype/student width (0: the teacher's); XL in fp32 cannot fit 2 × 7.5 GiB and is refused
CASES = ("large/auto/256", "large/auto/512", "xl/auto/256", "xl/bf16/256")


def overrides(teacher_dir: Path, student_hidden: int | None = None, teacher_dtype: str = "auto") -> list[str]:
    """The recipe cut to what 2 CPU ranks can run (module docstring); `student_hidden`: narrower, randomly initialised students."""
    narrow = [f"students.hidden={student_hidden}", "students.init=random"] if student_hidden else []
    return [f"teacher.path={teacher_dir}", "teacher.zero3=true", f"teacher.dtype={teacher_dtype}", "deepspeed.zero_stage=3", "loss.kernels=torch",
            "students.groups={en: [en]}", f"students.layers={STUDENT_LAYERS}", "data.kind=synthetic", "train.batch_size=1",
            "train.grad_accum=1", f"train.seq_len={SEQ_LEN}", f"train.steps={STEPS}", "train.warmup_steps=0", "train.save_every=0",
            "train.log_every=1", "tracking.enabled=false", f"dist.memory_gib={BUDGET_GIB:g}", *narrow]


# ------------------------------------------------------------------------------------------ the teacher directory


def write_tokenizer(out_dir: Path, vocab: int) -> None:
    """A sentencepiece tokenizer trained on the synthetic corpus, padded with never-used pieces to `vocab`
    entries (XLM-R's 250 002 with <pad> and <mask>), so that mdist's vocabulary checks see a full table."""
    from sentencepiece import sentencepiece_model_pb2
    from transformers import XLMRobertaTokenizer

    from mdist.data.synthetic import SyntheticCorpus
    from mdist.tokenizer import SP_MODEL_NAME, train_xlmr_tokenizer

    train_xlmr_tokenizer(SyntheticCorpus(seed=0).monolingual("en", documents=400), 2000, out_dir)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((out_dir / SP_MODEL_NAME).read_bytes())
    for i in range(vocab - 2 - len(proto.pieces)):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"\u2581\u2042{i}", -1e4
    (out_dir / SP_MODEL_NAME).write_bytes(proto.SerializeToString())
    (out_dir / "tokenizer.json").unlink(missing_ok=True)
    XLMRobertaTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))


def write_teacher(name: str, out_dir: Path) -> Path:
    """A random-weight teacher of the published shape `name`, written one layer's tensors at a time."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForMaskedLM, XLMRobertaConfig, XLMRobertaXLConfig

    from mdist.memory import XLMR

    if (out_dir / "model.safetensors.index.json").is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    s = XLMR[name]
    write_tokenizer(out_dir, s.vocab)
    kind = XLMRobertaXLConfig if s.pre_ln else XLMRobertaConfig
    config = kind(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads, intermediate_size=s.ffn,
                  max_position_embeddings=s.positions, type_vocab_size=s.type_vocab, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    config.dtype = "float16"  # what the files hold (the plan reads it: the teacher's loading reads them)
    config.save_pretrained(str(out_dir))
    with torch.device("meta"):  # names and shapes only
        shapes = {n: tuple(p.shape) for n, p in AutoModelForMaskedLM.from_config(config).named_parameters()}
    shards: dict[str, list[str]] = {}
    for key in shapes:
        layer = key.split(".layer.")[1].split(".")[0] if ".layer." in key else "rest"
        shards.setdefault(f"layer-{layer}.safetensors", []).append(key)
    generator = torch.Generator().manual_seed(0)
    for file, keys in shards.items():
        tensors = {}
        for key in keys:
            if key.endswith("bias"):
                tensors[key] = torch.zeros(shapes[key], dtype=torch.float16)
            elif "LayerNorm" in key or "layer_norm" in key:
                tensors[key] = torch.ones(shapes[key], dtype=torch.float16)
            else:
                tensors[key] = (torch.randn(shapes[key], generator=generator) * 0.02).half()
        save_file(tensors, str(out_dir / file))
    index = {"metadata": {"total_size": 2 * sum(math.prod(v) for v in shapes.values())}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return out_dir


# ------------------------------------------------------------------------------------------ one rank


PHASES = ("load_partitioned_teacher", "StudentGroup", "teacher_engine", "build_optimizer", "student_engine", "distill_step")


def heap_free_gib() -> float:
    """Bytes glibc's heap holds free (mallinfo2's fordblks): RSS the process keeps but no tensor uses."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().fordblks / 2**30


def rank_run(recipe: str, teacher_dir: Path, out_dir: Path, result: Path, student_hidden: int | None, teacher_dtype: str) -> None:
    """Inside torchrun: `run_distillation` as `mdist distill` calls it. Each rank records its RSS after the imports,
    and its current and peak RSS after each of mdist.run's building steps (PHASES) and before the export; there
    also the storage its live tensors hold by part (benchmarks/memory_model.py's count) and the heap's free bytes."""
    from memory_model import live_state_bytes

    import os

    import mdist.run
    from mdist.config import load_run_config
    from mdist.run import run_distillation

    def current_rss_gib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def peak_rss_gib() -> float:  # VmHWM: unlike getrusage's, reset by clear_refs
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**20

    baseline = current_rss_gib()
    phases: list[tuple[str, float, float]] = []
    built: dict = {}

    def traced(name, call):
        def run(*args, **kwargs):
            out = call(*args, **kwargs)
            built[name] = out
            phases.append((name, current_rss_gib(), peak_rss_gib()))
            if name == "student_engine":  # built: the steps' own peak from here
                built["peak"] = peak_rss_gib()
                Path("/proc/self/clear_refs").write_text("5")
            return out
        return run

    for name in PHASES:
        setattr(mdist.run, name, traced(name, getattr(mdist.run, name)))
    whole = mdist.run.gathered

    def record_then_gather(module, *args, **kwargs):  # the export gathers whole students: the run's peak is the one before it
        phases.append(("before export", current_rss_gib(), peak_rss_gib()))
        live.update(live_state_bytes(built["load_partitioned_teacher"][0], module, built["student_engine"], built["build_optimizer"]))
        live["heap free"] = heap_free_gib() * 2**30
        return whole(module, *args, **kwargs)

    live: dict = {}
    mdist.run.gathered = record_then_gather
    run_distillation(load_run_config(recipe, overrides(teacher_dir, student_hidden, teacher_dtype)), out_dir)
    rank = int(os.environ["RANK"])
    per_rank = {"rank": rank, "baseline_gib": baseline, "build_peak_gib": built["peak"], "step_peak_gib": phases[-1][2], "phases": phases,
                "live_gib": {k: v / 2**30 for k, v in live.items()}}
    (result.parent / f"{result.stem}.rank{rank}.json").write_text(json.dumps(per_rank), encoding="utf-8")


# ------------------------------------------------------------------------------------------ driver


def cpu_plan(recipe: str, teacher_dir: Path, student_hidden: int | None, teacher_dtype: str):
    from mdist.config import load_run_config
    from mdist.memory import teacher_shape_at
    from mdist.plan import plan

    return plan(load_run_config(recipe, overrides(teacher_dir, student_hidden, teacher_dtype), check_paths=False), teacher_shape_at(str(teacher_dir)), 2, BUDGET_GIB, gpu=False)


def refusals(recipe: str, teacher_dir: Path, work: Path, student_hidden: int | None, teacher_dtype: str) -> dict[str, str]:
    """What `mdist plan --cpu` and `mdist distill` (dist.memory_gib) say for 2 CPU ranks of BUDGET_GIB each."""
    import re
    import subprocess

    from memory_model import on_two_ranks

    sets = [a for o in overrides(teacher_dir, student_hidden, teacher_dtype) for a in ("--set", o)]
    planned = subprocess.run([sys.executable, "-m", "mdist", "plan", "--recipe", recipe, *sets, "--cpu", "--gpus", "2", "--gpu-mem", f"{BUDGET_GIB:g}"],
                             capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    distilled = on_two_ranks(["-m", "mdist", "distill", "--recipe", recipe, *sets, "--out", str(work / "refused")], timeout=600, check=False)
    said = {"plan": f"exit {planned.returncode}: {planned.stderr.strip().splitlines()[-1]}"}
    line = next((line for line in distilled.stderr.splitlines() if line.startswith("mdist distill: error:")), distilled.stderr.strip()[-300:])
    codes = sorted(set(re.findall(r"exitcode\s*:\s*(\d+)", distilled.stderr)))
    said["distill"] = f"ranks exit {', '.join(codes) or '?'} (torchrun {distilled.returncode}): {line}"
    return said


def xxl_parts() -> list[list]:
    """XXL by the model alone: the recipe's parts per rank on 2 CPU ranks, with the arithmetic that gives the large ones."""
    from mdist.memory import GIB, PARTS, XLMR, Layout

    from mdist.config import load_run_config
    from mdist.plan import per_rank, workload

    s = XLMR["xlm-roberta-xxl"]
    cfg = load_run_config("xlmr-xxl-monoshot", overrides(Path("models/xlm-roberta-xxl")), check_paths=False)
    work = workload(cfg, s)
    parts = per_rank(work, Layout(3, True, False, 1, 1), 2, gpu=False)
    P, T, VD = work.students.params(s), s.params, s.head_matrix
    how = {"teacher": f"T·4/2 + V·D·4 = {T:,}·2 + {VD:,}·4", "params": f"P·4/2 + V·D·4 = {P:,}·2 + {VD:,}·4",
           "grads": f"P·4/2 = {P:,}·2", "optimizer": f"P·(8 + 4)/2 = {P:,}·6", "head gradients": f"3·V·D·4 = {VD:,}·12",
           "optimizer step": f"2·4·P/2 = {P:,}·4", "step peak": "the largest transient moment (mdist.memory)",
           "building": f"T·4/2 + V·D·(2.5·4 + 4) = {T:,}·2 + {VD:,}·14", "total": "the larger of building and kept parts + step peak"}
    return [[part, how.get(part, "see mdist.memory"), f"{parts[part] / GIB:,.2f}"] for part in (*PARTS, "step peak", "building", "total")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), help="SIZE/TEACHER_DTYPE/STUDENT_WIDTH (0: the teacher's width; large at 1024 peaked at 9.8 GiB per rank)")
    parser.add_argument("--workdir", type=Path, help="keep teacher directories here (default: a temporary directory)")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--rank-run", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_run:
        recipe, teacher_dir, out_dir, result, hidden, dtype = args.rank_run
        rank_run(recipe, Path(teacher_dir), Path(out_dir), Path(result), int(hidden) or None, dtype)
        return

    from memory_model import on_two_ranks
    from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

    from mdist.memory import GIB, KEPT, XLMR

    commit, stamp, device = git_commit(), utc_stamp(), device_name("cpu")
    header = ["date (UTC)", "device", "commit", "teacher", "teacher.dtype", "run", "rank", "plan GiB/rank (total)", "RSS after imports GiB",
              "building: plan GiB", "building: peak − imports GiB", "measured/plan", "steps: plan GiB", "steps: peak − imports GiB", "measured/plan",
              "whole run: peak − imports GiB", "measured/plan total"]
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        for case in args.cases:
            size, dtype, hidden = case.split("/")
            name, recipe = SIZES[size]
            hidden = int(hidden)
            teacher_dir = write_teacher(name, work / name)
            planned = cpu_plan(recipe, teacher_dir, hidden or None, dtype)
            parts = planned.configured_bytes
            need, plan_build = parts["total"] / GIB, parts["building"] / GIB
            plan_steps = (sum(parts[part] for part in KEPT) + parts["step peak"]) / GIB
            width = hidden or XLMR[name].hidden
            run = f"{recipe}, 1 student × {STUDENT_LAYERS} layers × {width}, 1 × {SEQ_LEN}, {STEPS} steps, ZeRO-3 teacher and students"
            label = f"{name}, teacher.dtype {dtype}, students {width} wide"
            if not planned.fits_as_configured:
                said = refusals(recipe, teacher_dir, work, hidden or None, dtype)
                notes.append(f"{label}: plan {need:.2f} GiB per rank against {BUDGET_GIB:g}; `mdist plan` {said['plan']}; `mdist distill` {said['distill']}")
                rows.append([stamp, device, commit, name, dtype, run, "-", f"{need:.2f}", "refused before loading", *["-"] * 8])
                continue
            tag = f"{size}-{dtype}-{width}"
            on_two_ranks([__file__, "--rank-run", recipe, str(teacher_dir), str(work / f"{tag}-run"), str(work / f"{tag}.json"), str(hidden), dtype], timeout=3600)
            for rank in (0, 1):
                r = json.loads((work / f"{tag}.rank{rank}.json").read_text())
                build, steps = r["build_peak_gib"] - r["baseline_gib"], r["step_peak_gib"] - r["baseline_gib"]
                rows.append([stamp, device, commit, name, dtype, run, rank, f"{need:.2f}", f"{r['baseline_gib']:.2f}", f"{plan_build:.2f}", f"{build:.2f}",
                             f"{build / plan_build:.3f}", f"{plan_steps:.2f}", f"{steps:.2f}", f"{steps / plan_steps:.3f}",
                             f"{max(build, steps):.2f}", f"{max(build, steps) / need:.3f}"])
                notes.append(f"{label}, rank {rank}, RSS now / peak after each step (GiB): "
                             + ", ".join(f"{phase} {now:.2f} / {peak:.2f}" for phase, now, peak in r["phases"])
                             + "; live tensors before export (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in r["live_gib"].items()))
            notes.append(f"{label}, plan by part (GiB/rank): " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in planned.configured_bytes.items()))
    print(markdown_header(header))
    for row in rows:
        print(markdown_row(row))
    print("\n".join(notes))
    xxl_header = ["part", "arithmetic (bytes per rank, fp32, 2 ranks)", "GiB per rank"]
    xxl = xxl_parts()
    print(markdown_header(xxl_header))
    for row in xxl:
        print(markdown_row(row))
    if not args.no_record:
        append_table(f"Real-size teachers on 2 CPU ranks vs the plan (benchmarks/real_size.py), {stamp}, {commit}", header, rows)
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(f"- {note}" for note in notes) + "\n")
        append_table(f"XLM-R XXL by the model alone (mdist.memory; xlmr-xxl-monoshot cut as above, its 1 student × {STUDENT_LAYERS} layers at the teacher's width {XLMR['xlm-roberta-xxl'].hidden}, 2 CPU ranks), {stamp}, {commit}", xxl_header, xxl)


if __name__ == "__main__":
    main()
