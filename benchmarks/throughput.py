"""Step throughput: mdist's real distillation step beside a naive Hugging Face step and the no-distillation floor.

Random weights from XLMRobertaConfig with XLM-R base shapes (teacher 12 layers, students 6, hidden
768, 12 heads, FFN 3072, vocabulary 250 002), synthetic sequences packed to 512 tokens with dynamic
masking (`mdist.data.masking`), bf16 weights, one student per language (students share embeddings
and the tied head, as in mdist). Three kinds of step for every (batch, students), in one process:
- mdist: `mdist.train.distill_step` (sequential update unless --update joint; MonoShot loss via
  `DistillLoss`, fused Triton kernels by default) with `StudentGroup` and the group-masked AdamW;
  Q/K captured through mdist's SDPA attention, MLM head at masked positions only;
- naive: the issue-6 baseline: HF eager attention with `output_attentions` and `output_hidden_states`,
  full-vocabulary logits, PyTorch losses (CE + T²·KL at masked positions, hidden MSE over the mapped
  layers, MSE of the returned attention maps, embedding MSE; the same weights), AdamW;
- floor: teacher forward + student MLM step only (HF SDPA, head at masked positions), i.e. the
  models' own work; "over floor" = step time / floor step time − 1, the cost of distillation.
- "+ compile": the same step with `mdist.encode.compile_encoder_layers` applied to the teacher and
  the students (what `train.compile: true` does); it is compared with the floor + compile, so "over
  floor" stays the cost of distillation on the same encoder.
- "+ fused encoder": the mdist step with `mdist.fused_encoder.enable_fused_encoder` on the teacher and
  the students (what `train.encoder: fused` does: every layer one compiled function, Q/K/V one GEMM);
  it is compared with the plain floor, so "over floor" shows what the fused layer saves.
  "+ CUDA graphs": the same with each layer call replayed as a CUDA graph (`cuda_graphs=True`,
  inductor's "reduce-overhead"), for launch-bound small batches; not a config option until measured.

DeepSpeed stand-in: the GPU machine has no DeepSpeed, so `SingleGpuEngine` makes the calls
`distill_step` makes on DeepSpeed's engine. On one GPU without ZeRO that is all the engine does,
except that DeepSpeed's bf16 mode keeps fp32 master weights; here every variant steps its bf16
weights directly. Optimiser settings (lr, weight decay, clipping) are `TrainConfig`'s defaults;
mdist's steps use `mdist.optim.build_optimizer` (its `adamw` is torch's fused AdamW on a GPU), the
baselines a plain torch AdamW (multi-tensor unless `--optimizer adamw_fused`).

Model FLOPs per token (issue 6), MFU = tokens/s · FLOPs per token / peak dense bf16 FLOP/s (--peak-flops):
    forward(layers) = 2·P_body + 4·L·d·layers + 2·(d² + d·V)·0.15
P_body = layers·(4d² + 2·d·F): the weight matrices of the encoder layers (Q, K, V, output, FFN in
and out; biases and norms are not matrix work); 4·L·d per layer: QKᵀ and attention × V; the MLM head
(dense d² + decoder d·V) at the 15 % masked tokens. Each token passes the teacher (forward) and one
student (forward + backward ≈ 3 forwards): FLOPs per token = forward(12) + 3 · forward(6)
= 246.5 M + 3 · 152.1 M = 703 M at L = 512 (so 68 000 tokens/s is 4.8 % of an H100 SXM's 989 TFLOP/s).

    python benchmarks/throughput.py [--batches 16 64] [--students 1 2] [--variants ...] [--optimizer adamw|adamw_fused] [--steps 10] [--peak-flops 989e12] [--no-record]
    python benchmarks/throughput.py --smoke   # CPU-sized shapes, fp32, < 60 s, records nothing
    python benchmarks/throughput.py --variants mdist --batches 64 --students 1 --profile   # + where a step's time goes

`--profile` runs one more step of every row under torch.profiler and prints its kernel time (device
time on the GPU, CPU op time in the smoke run) by category (`PROFILE_CATEGORIES`, matched on kernel
or op names in order; the rest is elementwise work and reductions), the GPU's idle time, and the
largest kernels by name.

Without CUDA it runs the smoke shapes, says a GPU is needed, and records nothing.
Legend: B batch (sequences per language), L sequence, D hidden, V vocabulary, N masked positions.
"""
from __future__ import annotations

import argparse
import gc
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

from mdist.capture import ATTENTION_IMPLEMENTATION
from mdist.config import LossConfig, StudentsConfig, TrainConfig
from mdist.data.batch import TokenBatch
from mdist.data.masking import MaskingSpec, mask_tokens
from mdist.encode import compile_encoder_layers
from mdist.fused_encoder import enable_fused_encoder
from mdist.losses import DistillLoss
from mdist.memory import MASKED_FRACTION, Shape
from mdist.optim import build_optimizer, student_param_groups
from mdist.students import StudentGroup
from mdist.teacher import freeze
from mdist.train import distill_step
from profiling import HEADER as PROFILE_HEADER, kernel_times, print_largest
from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

BOS, PAD, EOS, UNK = 0, 1, 2, 3  # XLM-R's special ids; <mask> is the last id
HEADER = ("date (UTC)", "device", "commit", "step", "batch × length", "students", "tokens/s", "step ms", "peak GiB", "MFU %", "over floor")


@dataclass(frozen=True)
class Shapes:
    """Model and batch shapes; the defaults are XLM-R base at sequence length 512."""

    teacher_layers: int = 12
    student_layers: int = 6
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    vocab: int = 250_002
    seq_len: int = 512
    batches: tuple[int, ...] = (16, 64)


SMOKE = Shapes(teacher_layers=4, student_layers=2, hidden=32, heads=2, ffn=64, vocab=300, seq_len=24, batches=(2, 4))


def forward_flops_per_token(layers: int, d: int, ffn: int, seq_len: int, vocab: int) -> float:
    """2·P_body + 4·L·d·layers + 2·(d² + d·V)·0.15 (see the module docstring): mdist.memory's count, which `mdist plan` uses."""
    return Shape(vocab=vocab, hidden=d, ffn=ffn, heads=1, layers=layers).forward_flops_per_token(seq_len)


def step_flops_per_token(s: Shapes) -> float:
    """Teacher forward + student forward and backward (3 forwards) per token."""

    def forward(layers: int) -> float:
        return forward_flops_per_token(layers, s.hidden, s.ffn, s.seq_len, s.vocab)

    return forward(s.teacher_layers) + 3 * forward(s.student_layers)


class SingleGpuEngine:
    """Stands in for DeepSpeed's engine on one device (no ZeRO): the calls `distill_step` makes.

    `step()` clips the global gradient norm as DeepSpeed's `gradient_clipping` does, steps the
    optimiser and clears the gradients.
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float):
        self.module, self.optimizer, self.grad_clip = module, optimizer, grad_clip

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_models(
    s: Shapes, langs: list[str], attention: str, dtype: torch.dtype, device: str, compiled: bool, fused: bool, graphs: bool = False,
) -> tuple[XLMRobertaForMaskedLM, StudentGroup]:
    """Random frozen teacher and a student group (one student per language) running `attention`,
    with compiled layer blocks when `compiled`, mdist's fused layer when `fused` (as CUDA graphs when `graphs`)."""
    config = XLMRobertaConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.teacher_layers, num_attention_heads=s.heads,
        intermediate_size=s.ffn, max_position_embeddings=s.seq_len + PAD + 1, type_vocab_size=1,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, attn_implementation=ATTENTION_IMPLEMENTATION,
    )
    with torch.device(device):  # initialise on the GPU: a 250k-row embedding is slow to fill on the CPU
        teacher = XLMRobertaForMaskedLM(config)
        group = StudentGroup(teacher, StudentsConfig(groups={lang: [lang] for lang in langs}, layers=s.student_layers, init="random"), s.hidden)
    for model in (teacher, *group.students.values()):
        model.set_attn_implementation(attention)
        if compiled:
            compile_encoder_layers(model)
        if fused:
            enable_fused_encoder(model, cuda_graphs=graphs)
    return freeze(teacher).to(dtype), group.to(dtype).train()


def synthetic_batches(s: Shapes, langs: list[str], batch: int, device: str, seed: int = 0) -> dict[str, TokenBatch]:
    """Per language: B full-length rows of random ids between <s> and </s>, masked as in training."""
    gen = torch.Generator().manual_seed(seed)
    spec = MaskingSpec(mask_id=s.vocab - 1, vocab_size=s.vocab, special_ids=(BOS, PAD, EOS, UNK, s.vocab - 1), probability=MASKED_FRACTION)
    out = {}
    for lang in langs:
        ids_BL = torch.randint(UNK + 1, s.vocab - 1, (batch, s.seq_len), generator=gen)
        ids_BL[:, 0], ids_BL[:, -1] = BOS, EOS
        input_ids_BL, labels_BL = mask_tokens(ids_BL, spec, gen)
        out[lang] = TokenBatch(lang, input_ids_BL, torch.ones_like(ids_BL), labels_BL).to(device)
    return out


def mdist_step(teacher, group: StudentGroup, batches, loss_fn: DistillLoss, train: TrainConfig) -> Callable[[int], object]:
    """mdist's own step: distill_step with the group-masked optimiser over student parameter groups."""
    groups = student_param_groups(dict(group.students), group.projections, train.weight_decay)
    optimizer = build_optimizer(train.optimizer, groups, train.lr)
    engine = SingleGpuEngine(group, optimizer, train.grad_clip)
    return lambda step: distill_step(engine, optimizer, teacher, loss_fn, batches, train.update, step)


def adamw_engine(group: StudentGroup, train: TrainConfig) -> SingleGpuEngine:
    """The baselines' optimiser: one plain AdamW over the group (parameters without gradients are skipped)."""
    optimizer = torch.optim.AdamW(group.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=train.optimizer == "adamw_fused")
    return SingleGpuEngine(group, optimizer, train.grad_clip)


def naive_loss(student_out, teacher_out, labels_BL: torch.Tensor, spec: DistillLoss) -> torch.Tensor:
    """The MonoShot terms the straightforward way: full logits indexed at masked positions, attention maps."""
    masked_BL = labels_BL != -100
    logits_s_NV, logits_t_NV = student_out.logits[masked_BL].float(), teacher_out.logits[masked_BL].float()
    T = spec.temperature
    hs, ht, att_s, att_t = student_out.hidden_states, teacher_out.hidden_states, student_out.attentions, teacher_out.attentions
    terms = {
        "mlm": F.cross_entropy(logits_s_NV, labels_BL[masked_BL]),
        "kl": T * T * F.kl_div(F.log_softmax(logits_s_NV / T, -1), F.log_softmax(logits_t_NV / T, -1), reduction="batchmean", log_target=True),
        "hid": sum(F.mse_loss(hs[m], ht[g]) for m, g in spec.pairs),
        "att": sum(F.mse_loss(att_s[m - 1], att_t[g - 1]) for m, g in spec.pairs),
        "emb": F.mse_loss(hs[0], ht[0]),
    }
    return sum(spec.weights[name] * term for name, term in terms.items())


def naive_step(teacher, group: StudentGroup, batches, loss_fn: DistillLoss, train: TrainConfig) -> Callable[[int], None]:
    engine = adamw_engine(group, train)
    outputs = dict(output_hidden_states=True, output_attentions=True)

    def step(_: int) -> None:
        for lang, batch in batches.items():
            with torch.no_grad():
                teacher_out = teacher(input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL, **outputs)
            for name in group.student_for(lang):
                student_out = group.students[name](input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL, **outputs)
                engine.backward(naive_loss(student_out, teacher_out, batch.labels_BL, loss_fn))
                engine.step()

    return step


def masked_logits_NV(model: XLMRobertaForMaskedLM, batch: TokenBatch) -> torch.Tensor:
    hidden_BLD = model.base_model(input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL).last_hidden_state
    return model.lm_head(hidden_BLD[batch.labels_BL != -100])


def floor_step(teacher, group: StudentGroup, batches, loss_fn: DistillLoss, train: TrainConfig) -> Callable[[int], None]:
    engine = adamw_engine(group, train)

    def step(_: int) -> None:
        for lang, batch in batches.items():
            with torch.no_grad():
                masked_logits_NV(teacher, batch)  # the teacher's share of the work; distillation would read it
            for name in group.student_for(lang):
                logits_NV = masked_logits_NV(group.students[name], batch).float()
                engine.backward(F.cross_entropy(logits_NV, batch.labels_BL[batch.labels_BL != -100]))
                engine.step()

    return step


@dataclass(frozen=True)
class Variant:
    attention: str  # transformers attention implementation
    build_step: Callable
    compiled: bool = False  # compile_encoder_layers on teacher and students
    fused: bool = False  # enable_fused_encoder on teacher and students
    graphs: bool = False  # ... with each layer replayed as a CUDA graph


# Each floor comes before the variants compared with it (same `compiled`).
VARIANTS = {
    "floor": Variant("sdpa", floor_step),
    "mdist": Variant(ATTENTION_IMPLEMENTATION, mdist_step),
    "mdist + fused encoder": Variant(ATTENTION_IMPLEMENTATION, mdist_step, fused=True),
    "mdist + fused encoder + CUDA graphs": Variant(ATTENTION_IMPLEMENTATION, mdist_step, fused=True, graphs=True),
    "floor + compile": Variant("sdpa", floor_step, compiled=True),
    "mdist + compile": Variant(ATTENTION_IMPLEMENTATION, mdist_step, compiled=True),
    "naive HF": Variant("eager", naive_step),
}


TOP_KERNELS = 15  # --profile also lists this many of the largest kernels by name
PROFILE_CATEGORIES = [  # (category, kernel/op name pattern); first match wins
    ("vocabulary KL+CE kernels", r"_stats_kernel|_combine_kernel|_grad_kernel"),
    ("attention-score / hidden loss kernels", r"_score_mse|hidden_mse|_mse_kernel"),
    ("SDPA attention", r"flash|fmha|cudnn|scaled_dot_product|attention"),
    ("GEMMs (encoder and vocabulary)", r"gemm|cutlass|xmma|nvjet|sm90|aten::(mm|addmm|bmm|baddbmm)$"),
    ("optimiser", r"adam|multi_tensor|foreach|aten::_fused"),
    ("copies, cat, stack", r"copy|memcpy|aten::(cat|stack|clone|contiguous)$|CatArray"),
]


def profile_step(step: Callable[[int], object], i: int, device: str) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
    """Milliseconds of one step's kernels by category, and all its kernels as (name, ms, calls), largest first."""
    import re

    times = kernel_times(lambda: step(i), device == "cuda")
    totals = {name: 0.0 for name, _ in PROFILE_CATEGORIES} | {"elementwise, reductions, other": 0.0}
    for name, ms, _ in times:
        category = next((c for c, pattern in PROFILE_CATEGORIES if re.search(pattern, name, re.IGNORECASE)), "elementwise, reductions, other")
        totals[category] += ms
    return totals, times


@dataclass(frozen=True)
class Timing:
    step_s: float
    tokens_per_s: float
    peak_gib: float | None  # None on the CPU
    profile: list[list[str]]  # with --profile: (work or kernel, ms, calls) cells; else empty


def measure(variant: Variant, s: Shapes, langs: list[str], batch: int, kernels: str, args, device: str, dtype: torch.dtype) -> Timing:
    """Build fresh models for `variant`, warm up (compilation included), then time `args.steps` steps;
    peak memory over the timed steps."""
    if variant.compiled or variant.fused:
        torch._dynamo.reset()  # each variant compiles afresh (in its untimed warm-up), not from another's cache
    teacher, group = build_models(s, langs, variant.attention, dtype, device, variant.compiled, variant.fused, variant.graphs)
    batches = synthetic_batches(s, langs, batch, device)
    loss = LossConfig()
    loss_fn = DistillLoss.build("monoshot", loss.weights, loss.mapping, loss.temperature, s.student_layers, s.teacher_layers, kernels)
    step = variant.build_step(teacher, group, batches, loss_fn, replace(TrainConfig(), update=args.update, optimizer=args.optimizer))
    cuda = device == "cuda"
    for i in range(args.warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    if cuda:
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / args.steps
    tokens = sum(b.tokens for b in batches.values())
    profile = []
    if args.profile:
        categories, top = profile_step(step, args.warmup + args.steps, device)
        print(f"profile of one step, batch {batch}, {len(langs)} student(s) (ms of {'kernel' if cuda else 'CPU op'} time, step {step_s * 1e3:.1f} ms):")
        print(markdown_header(["work", "ms per step"]))
        profile = [[category, f"{ms:.1f}", ""] for category, ms in categories.items()]
        profile.append(["all", f"{sum(categories.values()):.1f}", ""])
        if cuda:  # kernels overlap little in one stream: the rest of the step the GPU waited for the host
            profile.append(["GPU idle (step − kernel time)", f"{step_s * 1e3 - sum(categories.values()):.1f}", ""])
        for work, ms, _ in profile:
            print(markdown_row([work, ms]))
        profile += print_largest(top, TOP_KERNELS, "kernels of the step" if cuda else "ops of the step")
    return Timing(step_s, tokens / step_s, torch.cuda.max_memory_allocated() / 2**30 if cuda else None, profile)


def run(s: Shapes, args, device: str, dtype: torch.dtype, kernels: str, stamp: str) -> tuple[list[list], list[list]]:
    """Print and return the table rows: every variant for every (batch, students), OOM rows say so;
    and the profile rows (`PROFILE_HEADER`) with --profile."""
    revision, name = git_commit(), device_name(device)
    flops = step_flops_per_token(s)
    print(f"{name}: {dtype}, kernels {kernels}, update {args.update}, optimizer {args.optimizer}, {flops / 1e6:,.1f} MFLOPs per token, peak {args.peak_flops:.3g} FLOP/s")
    print(markdown_header(HEADER))
    rows, profile_rows = [], []
    for batch in args.batches or s.batches:
        for students in args.students:
            langs = [f"lang{i}" for i in range(students)]
            floors: dict[bool, Timing] = {}
            for variant_name in args.variants:
                variant = VARIANTS[variant_name]
                label = variant_name.replace("mdist", f"mdist ({kernels})")
                try:
                    timing = measure(variant, s, langs, batch, kernels, args, device, dtype)
                except torch.OutOfMemoryError:
                    timing = None
                gc.collect()  # free this variant's models before the next one is built
                if device == "cuda":
                    torch.cuda.empty_cache()
                cells = [stamp, name, revision, label, f"{batch} × {s.seq_len}", students]
                if timing is None:
                    cells += ["OOM"] * 4 + [""]
                else:
                    is_floor = variant.build_step is floor_step
                    if is_floor:
                        floors[variant.compiled] = timing
                    floor = floors.get(variant.compiled)
                    over = f"{timing.step_s / floor.step_s - 1:+.0%}" if floor and not is_floor else ""
                    peak = "-" if timing.peak_gib is None else f"{timing.peak_gib:.1f}"
                    mfu = timing.tokens_per_s * flops / args.peak_flops
                    cells += [f"{timing.tokens_per_s:,.0f}", f"{timing.step_s * 1e3:.1f}", peak, f"{100 * mfu:.1f}", over]
                print(markdown_row(cells), flush=True)
                rows.append(cells)
                profiled = f"{label}, batch {batch} × {s.seq_len}, {students} student(s)"
                profile_rows += [[stamp, name, revision, profiled, *entry] for entry in (timing.profile if timing else [])]
    return rows, profile_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU-sized shapes in fp32; records nothing")
    parser.add_argument("--batches", type=int, nargs="+", help="sequences per language (default 16 64; smoke 2 4)")
    parser.add_argument("--students", type=int, nargs="+", default=[1, 2], help="students (one language each)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="steps to time, in this order (default: all; without CUDA all but CUDA graphs)")
    parser.add_argument("--steps", type=int, help="timed steps per row (default 10; smoke 1)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; smoke 0)")
    parser.add_argument("--kernels", choices=["triton", "torch"], help="mdist's loss path (default triton; smoke: triton under TRITON_INTERPRET=1, else torch)")
    parser.add_argument("--update", choices=["sequential", "joint"], default=TrainConfig().update, help="mdist's update mode (the baselines step after every pair)")
    parser.add_argument("--optimizer", choices=["adamw", "adamw_fused"], default="adamw", help="the optimiser by mdist's name; the baselines' AdamW is torch's multi-tensor default unless adamw_fused (mdist's adamw is fused on a GPU either way)")
    parser.add_argument("--peak-flops", type=float, default=989e12, help="peak dense bf16 FLOP/s for MFU (H100 SXM: 989e12)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--profile", action="store_true", help="also profile one step per row and print its kernel time by category")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    smoke = args.smoke or not cuda
    args.variants = args.variants or [name for name, variant in VARIANTS.items() if cuda or not variant.graphs]
    args.steps = args.steps or (1 if smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if smoke else 3)
    if smoke:
        # mdist.kernels binds its kernels to the interpreter at import, so the environment decides
        kernels = args.kernels or ("triton" if os.environ.get("TRITON_INTERPRET") == "1" else "torch")
        run(SMOKE, args, "cpu", torch.float32, kernels, utc_stamp())
        if not cuda and not args.smoke:
            print("throughput needs a CUDA GPU; ran the CPU smoke shapes only, nothing recorded")
        return
    stamp = utc_stamp()
    rows, profile_rows = run(Shapes(), args, "cuda", torch.bfloat16, args.kernels or "triton", stamp)
    if not args.no_record:
        title = f"Step throughput (benchmarks/throughput.py), {stamp}, XLM-R base shapes, update {args.update}, optimizer {args.optimizer}, MFU of {args.peak_flops:.3g} FLOP/s"
        append_table(title, HEADER, rows)
        if profile_rows:
            append_table(f"Step profiles (benchmarks/throughput.py --profile), {stamp}, ms of kernel time in one step", PROFILE_HEADER, profile_rows)


if __name__ == "__main__":
    main()
