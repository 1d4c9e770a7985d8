"""Per-rank memory of a distillation run, by part: the one memory model (`mdist plan`, the check
`mdist distill` runs first, benchmarks/memory_model.py). Pure arithmetic: no torch.

Bytes per rank (P = unique student parameters, shared embeddings and tied head counted once; T = teacher
parameters; W = ranks; V·D = the tied word-embedding / decoder matrix, which ZeRO-3 keeps gathered as
an external parameter of the MLM head):

  teacher      replicated: T·w               ZeRO-3: T·w/W + V·D·w
  params       stage 0-2:  P·w               stage 3: P·w/W + V·D'·w
  gradients    stage 0:    P·g (+ P·4 bf16)  stage 1-3: P·g/W  (stage 1 reduces into partitions too)
  optimiser    stage 0:    P·8 (+ P·4 bf16)  stage 1-3: P·(8 + master)/W; 0 with the optimiser offloaded
               (bf16 at stage 0: DeepSpeed's BF16_Optimizer keeps fp32 master weights and gradients)
  teacher outputs   kept for the whole step: every language × every micro-batch of it (sequential
               update) or one micro-batch of every language (joint), each (3·layers + 1)·B·L·D·a
               (hidden states of every layer, Q and K of every layer)
  activations  one student's forward/backward (sequential; every student of the micro-batch when joint):
               per token and layer a·(9.5·D' + 2·F') + 2·D' (dropout masks), and on the CPU, whose SDPA
               saves the attention probabilities, 12·H·L more; the teacher's working layer, B·L·(F + 3D)·a
  loss terms   the hidden-state and attention terms (fp32): 12 bytes per element of each hidden pair, and with
               the PyTorch ops 4 per attention score B·H·L² of each attention pair (the fused kernel keeps none)
  logits       the vocabulary loss at masked positions (15 % of B·L): 32 bytes per position × V with the
               PyTorch ops, 188 KB per position with the fused chunked kernel (loss.kernels: triton)
  head gradients    the tied embedding/decoder matrix's gradient before ZeRO reduces it: the decoder's
               V·D'·g (from the first op of the backward on) and the embedding's, and their sum (stage 0:
               2·V·D'·g, the sum being the kept gradient) or DeepSpeed's flat copies (stage 1-3: 3·V·D'·g)
  optimizer step    on CPU ranks, torch's AdamW (one tensor at a time) makes 2 temporaries of the largest
               tensor it updates: V·D' at stage 0, the rank's flat fp32 partition (≤ P/W) at stage 1-3;
               0 on a GPU (fused AdamW) or with the optimiser offloaded
  buffers      DeepSpeed's gradient buckets, allocated whole whatever P is (stage 1-2: two of
               reduce_bucket_size 5e7 elements; stage 3: one, and a gathered layer; stage 0: none), a
               ZeRO-3 teacher's gathered layer, and on a GPU the CUDA context and cuBLAS workspace (1 GiB)

Kept through the step: teacher, params, grads, optimizer, teacher outputs, buffers. The rest is transient,
and the step's transient peak is the largest of three moments (measured with the profiler's allocation
timeline on 2 ranks, stage 0-3, benchmarks/memory_model.py): the start of the backward (activations + loss
terms + logits + the decoder's gradient V·D'·g), the end of the backward (head gradients) and the optimiser
step. Before the first step, a ZeRO-3 teacher's loading peaks while it fills its largest tensor, the word
embeddings: its partitions, the matrix gathered whole and DeepSpeed's copies of it (2.5·V·D·t, the profiler's
allocation timeline) and the weight file it is read from (V·D at the checkpoint's bytes per value, s):
building = T·t/W + 2.5·V·D·t + V·D·s. total = the larger of building and kept + the step's peak.

w = g = 2 (bf16) and master = 4 on a GPU, a = 2; on the CPU everything is fp32 (4), and ZeRO 1-3 still keep
their own fp32 partition (master = 4). The teacher's weights, outputs and working layer take `teacher.dtype`'s
bytes instead of w and a (auto: as the device). Where the numbers come from: the state terms are exact (checked
against real DeepSpeed engines on 2 ranks, tests/test_benchmarks.py); the activation constants were measured
with saved-tensor hooks on Hugging Face XLM-R and XL layers (tests/test_plan.py keeps them within 4 %); the
logits constants are the measured extra peaks of the vocabulary op in benchmarks/RESULTS.md (eager
reference 36.63 GiB and fused 0.86 GiB for N = 4915 positions, V = 250 002).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mdist.config import teacher_bf16

GIB = 1024**3
MASKED_FRACTION = 0.15
REDUCE_BUCKET = 50_000_000  # ds_configs/student_zero*.json reduce_bucket_size
CUDA_CONTEXT = 1 * GIB
LOGIT_BYTES_TORCH = 32  # per masked position and vocabulary entry (eager reference, RESULTS.md kernels table)
LOGIT_BYTES_FUSED = 0.86 * GIB / 4915  # per masked position (fused, whole-vocab chunks, same table)


@dataclass(frozen=True)
class Shape:
    """An XLM-R-family encoder. `pre_ln`: XL's layout (the embedding LayerNorm moves to the end of the encoder)."""

    vocab: int
    hidden: int
    ffn: int
    heads: int
    layers: int
    positions: int = 514
    type_vocab: int = 1
    pre_ln: bool = False
    checkpoint_bytes: int = 4  # per value in the weight files (config.json's dtype; fp32 where it names none, as published)

    @property
    def layer_params(self) -> int:
        d, f = self.hidden, self.ffn
        return 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d

    @property
    def shared_params(self) -> int:
        """Embeddings + MLM head (dense, LayerNorm, decoder bias; decoder weight tied to the embeddings);
        for pre-LN models the encoder's final LayerNorm instead of the embedding one (same size)."""
        d = self.hidden
        return (self.vocab + self.positions + self.type_vocab) * d + 2 * d + (d * d + d) + 2 * d + self.vocab

    @property
    def params(self) -> int:
        return self.shared_params + self.layers * self.layer_params

    @property
    def head_matrix(self) -> int:
        return self.vocab * self.hidden

    def forward_flops_per_token(self, seq_len: int) -> float:
        """2·P_body + 4·L·D·layers (attention scores and values) + the MLM head at masked positions."""
        d = self.hidden
        body = self.layers * (4 * d * d + 2 * d * self.ffn)
        return 2 * body + 4 * seq_len * d * self.layers + 2 * (d * d + d * self.vocab) * MASKED_FRACTION


# The XLM-R family as published (Conneau et al. 2020; Goyal et al. 2021): vocabulary, width, FFN, heads, layers.
XLMR = {
    "xlm-roberta-base": Shape(250_002, 768, 3072, 12, 12),
    "xlm-roberta-large": Shape(250_002, 1024, 4096, 16, 24),
    "xlm-roberta-xl": Shape(250_880, 2560, 10240, 32, 36, pre_ln=True),
    "xlm-roberta-xxl": Shape(250_880, 4096, 16384, 32, 48, pre_ln=True),
}


def shape_from_config(config: dict) -> Shape:
    """The shape of a Hugging Face config dict (config.json, or `tiny_teacher_shape`'s keys and more)."""
    return Shape(
        vocab=config["vocab_size"], hidden=config["hidden_size"], ffn=config["intermediate_size"], heads=config["num_attention_heads"],
        layers=config["num_hidden_layers"], positions=config["max_position_embeddings"], type_vocab=config.get("type_vocab_size", 1),
        pre_ln=config.get("model_type") == "xlm-roberta-xl",
        checkpoint_bytes=2 if str(config.get("dtype") or config.get("torch_dtype")) in ("float16", "bfloat16") else 4,
    )


def teacher_shape_at(path: str) -> Shape | None:
    """The shape of the teacher at `path` (its config.json), or, where no such directory exists, of the
    published XLM-R model its last path part names (models/xlm-roberta-xl); None if neither."""
    config = Path(path) / "config.json"
    if config.is_file():
        return shape_from_config(json.loads(config.read_text(encoding="utf-8")))
    return XLMR.get(Path(path).name.removeprefix("facebook-"))


@dataclass(frozen=True)
class Students:
    """The student group: how many students, their depth and width, and what they share."""

    count: int
    layers: int
    hidden: int | None = None  # None: the teacher's width
    share_embeddings: bool = True
    tie_head: bool = True

    def shape(self, teacher: Shape) -> Shape:
        """One student's shape: the teacher's, at `layers` and (FFN scaled with it) `hidden`."""
        d = self.hidden or teacher.hidden
        ffn = max(1, int(teacher.ffn * d / teacher.hidden))
        return Shape(teacher.vocab, d, ffn, teacher.heads, self.layers, teacher.positions, teacher.type_vocab, teacher.pre_ln)

    def params(self, teacher: Shape) -> int:
        """Unique parameters: shared embeddings and head once, encoder layers per student, projections d' → d."""
        s = self.shape(teacher)
        own = self.layers * s.layer_params + (2 * s.hidden if s.pre_ln else 0)  # pre-LN: the final LayerNorm is the encoder's
        shared = s.shared_params - (2 * s.hidden if s.pre_ln else 0)
        if not self.tie_head:
            own += s.head_matrix
        projections = (self.layers + 1) * s.hidden * teacher.hidden if s.hidden != teacher.hidden else 0
        copies = 1 if self.share_embeddings else self.count
        return copies * shared + self.count * (own + projections)


@dataclass(frozen=True)
class Layout:
    """How a run is spread over ranks: student ZeRO stage, teacher partitioned or not, optimiser offload,
    micro-batch (sequences per language per rank) and accumulation."""

    zero_stage: int
    teacher_zero3: bool
    offload_optimizer: bool
    micro_batch: int
    grad_accum: int


@dataclass(frozen=True)
class Workload:
    """What one step computes: teacher, students, sequence length, languages, update order, loss kernels."""

    teacher: Shape
    students: Students
    seq_len: int
    languages: int
    joint: bool = False
    fused_logits: bool = False
    hidden_pairs: int = 0  # (student, teacher) hidden states the loss compares (embeddings included)
    attention_pairs: int = 0  # attention-score pairs (the PyTorch op builds B·H·L² scores for each)
    teacher_dtype: str = "auto"  # teacher.dtype: its weights and outputs

    def teacher_bytes(self, gpu: bool) -> int:
        """Bytes per teacher weight and output value."""
        return 2 if teacher_bf16(self.teacher_dtype, gpu) else 4


KEPT = ("teacher", "params", "grads", "optimizer", "teacher outputs", "buffers")
TRANSIENT = ("activations", "loss terms", "logits", "head gradients", "optimizer step")
PARTS = KEPT + TRANSIENT


def states(work: Workload, layout: Layout, world: int, gpu: bool) -> dict[str, float]:
    """Bytes per rank of the teacher and the student engine's states (parameters, gradients, optimiser)."""
    w = g = 2 if gpu else 4
    teacher, P = work.teacher, work.students.params(work.teacher)
    head = work.students.shape(teacher).head_matrix
    t = work.teacher_bytes(gpu)
    out = {"teacher": (teacher.params * t / world + teacher.head_matrix * t) if layout.teacher_zero3 else teacher.params * t}
    out["params"] = (P * w / world + head * w) if layout.zero_stage == 3 else P * w
    bf16_stage0 = gpu and layout.zero_stage == 0  # DeepSpeed's BF16_Optimizer: fp32 master weights and gradients beside the bf16 ones
    out["grads"] = P * g / world if layout.zero_stage >= 1 else P * (g + (4 if bf16_stage0 else 0))
    master = 4 if (gpu or layout.zero_stage >= 1) else 0
    optimizer = P * (8 + (4 if bf16_stage0 else 0)) if layout.zero_stage == 0 else P * (8 + master) / world
    out["optimizer"] = 0.0 if layout.offload_optimizer else optimizer
    return out


def activation_bytes_per_token_layer(s: Shape, seq_len: int, gpu: bool) -> float:
    """Saved for backward per token and layer (see the module docstring)."""
    a = 2 if gpu else 4
    scores = 0 if gpu else 12 * s.heads * seq_len  # CPU SDPA (math path) keeps the probabilities and their dropout mask
    return a * (9.5 * s.hidden + 2 * s.ffn) + 2 * s.hidden + scores


def student_activations(work: Workload, micro_batch: int, gpu: bool) -> float:
    """What one student's forward saves for its backward, at `micro_batch` sequences."""
    student = work.students.shape(work.teacher)
    return micro_batch * work.seq_len * student.layers * activation_bytes_per_token_layer(student, work.seq_len, gpu)


def loss_terms(work: Workload, micro_batch: int) -> float:
    """What the hidden-state and attention loss terms save for the backward (fp32): 12 bytes per element of
    each hidden pair at the teacher's width, and with the PyTorch ops 4 per attention score of each pair."""
    tokens = micro_batch * work.seq_len
    scores = 0 if work.fused_logits else work.attention_pairs * micro_batch * work.teacher.heads * work.seq_len**2 * 4
    return work.hidden_pairs * tokens * work.teacher.hidden * 12 + scores


def per_rank(work: Workload, layout: Layout, world: int, gpu: bool = True) -> dict[str, float]:
    """Modelled bytes per rank, by part (PARTS), the step's transient peak and the total."""
    out = states(work, layout, world, gpu)
    a = 2 if gpu else 4
    teacher, student = work.teacher, work.students.shape(work.teacher)
    tokens = layout.micro_batch * work.seq_len
    kept_micro = work.languages if work.joint else work.languages * layout.grad_accum
    t = work.teacher_bytes(gpu)
    out["teacher outputs"] = kept_micro * (3 * teacher.layers + 1) * tokens * teacher.hidden * t
    running = work.languages if work.joint else 1  # students whose graphs are alive at once
    teacher_layer = tokens * (teacher.ffn + 3 * teacher.hidden) * t + (0 if gpu else layout.micro_batch * teacher.heads * work.seq_len**2 * 4)
    out["activations"] = running * student_activations(work, layout.micro_batch, gpu) + teacher_layer
    out["loss terms"] = running * loss_terms(work, layout.micro_batch)
    masked = MASKED_FRACTION * tokens
    out["logits"] = running * masked * (LOGIT_BYTES_FUSED if work.fused_logits else LOGIT_BYTES_TORCH * teacher.vocab)
    P = work.students.params(teacher)
    buffers = {0: 0, 1: 2 * REDUCE_BUCKET * a, 2: 2 * REDUCE_BUCKET * a, 3: (REDUCE_BUCKET + student.layer_params) * a}[layout.zero_stage]
    if layout.teacher_zero3:
        buffers += teacher.layer_params * t
    out["buffers"] = buffers + (CUDA_CONTEXT if gpu else 0)
    out["head gradients"] = (2 if layout.zero_stage == 0 else 3) * student.head_matrix * a
    if gpu or layout.offload_optimizer:
        out["optimizer step"] = 0.0
    else:
        out["optimizer step"] = 2 * 4 * (student.head_matrix if layout.zero_stage == 0 else P / world)
    backward_start = out["activations"] + out["loss terms"] + out["logits"] + student.head_matrix * a  # + the decoder's gradient
    out["step peak"] = max(backward_start, out["head gradients"], out["optimizer step"])
    out["building"] = teacher.params * t / world + teacher.head_matrix * (2.5 * t + teacher.checkpoint_bytes) if layout.teacher_zero3 else out["teacher"]
    out["total"] = max(out["building"], sum(out[part] for part in KEPT) + out["step peak"])
    return out
