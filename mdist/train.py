"""Algorithm 1: one distillation step over all languages and their students.

1. one equal-sized batch per language (from the batch source);
2. the teacher runs on every batch (no grad) and its outputs are kept;
3. for each language, for each student that owns it: student forward, loss, update.
`sequential` (the thesis) steps the optimiser after every (language, student) pair and updates
only that student's parameters (plus shared ones); `joint` sums all pairs' losses into one step.
The lr schedule advances once per Algorithm-1 step in both modes (so warm-up and decay are in the
thesis's step units however many optimiser steps a step makes). DeepSpeed is not given the
scheduler: the caller steps it after `distill_step` returns.

Gradient accumulation (`train.grad_accum` = A): each language's per-rank batch holds A
micro-batches. Sequential: every (language, student) pair runs A forward/backward passes and then
one optimiser step, so every pair still gets exactly one update per Algorithm-1 step. Joint: each
micro-batch sums all pairs' losses into one backward; one optimiser step after A of them.
DeepSpeed's own accounting does the rest: with `gradient_accumulation_steps = A` its
`engine.backward` scales each loss by 1/A and `engine.step()` only applies the optimiser (and
clipping, and the gradient all-reduce) at every A-th call; the number of `engine.step()` calls per
pair is A in both modes, so its boundaries line up with ours.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mdist.data.batch import TokenBatch
from mdist.encode import EncoderOutput, encode
from mdist.errors import NonFiniteLossError
from mdist.losses import DistillLoss
from mdist.optim import set_active_students


@dataclass
class StepResult:
    """Per (student, language) unweighted loss terms and the weighted total, plus token count."""

    terms: dict[str, dict[str, float]] = field(default_factory=dict)  # "student/lang" -> term -> value
    tokens: int = 0


def micro_batches(batch: TokenBatch, accumulation: int) -> list[TokenBatch]:
    """Split a per-rank batch into `accumulation` equal micro-batches (in order)."""
    if accumulation == 1:
        return [batch]
    rows = batch.input_ids_BL.shape[0]
    if rows % accumulation:
        raise ValueError(f"batch of {rows} sequences does not split into {accumulation} micro-batches")
    size = rows // accumulation
    return [batch.rows(i, i + size) for i in range(0, rows, size)]


def teacher_outputs(teacher: torch.nn.Module, batches: dict[str, TokenBatch]) -> dict[str, EncoderOutput]:
    with torch.no_grad():
        return {
            lang: encode(teacher, b.input_ids_BL, b.attention_mask_BL, b.labels_BL, masked_N=b.masked_N, padded=b.padded)
            for lang, b in batches.items()
        }


def _read_terms(sums: dict[str, dict[str, torch.Tensor]], step: int) -> dict[str, dict[str, float]]:
    """All loss terms of the step as floats, read from the device at once; the first non-finite one
    (in Algorithm 1's order) stops the run. Checking once per step rather than per update is safe:
    a failed run never saves again, so the last good checkpoint is the one on disk."""
    flat = [(pair, name, value) for pair, terms in sums.items() for name, value in terms.items()]
    values = torch.stack([value.float() for _, _, value in flat]).tolist() if flat else []
    read: dict[str, dict[str, float]] = {}
    for (pair, name, _), value in zip(flat, values):
        read.setdefault(pair, {})[name] = value
    for pair, terms in read.items():
        student, lang = pair.split("/")
        NonFiniteLossError.check(step, f"student '{student}' on language '{lang}'", terms)
    return read


def distill_step(engine, optimizer, teacher, loss_fn: DistillLoss, batches: dict[str, TokenBatch], update: str, step: int, accumulation: int = 1) -> StepResult:
    group = engine.module
    result = StepResult(tokens=sum(b.tokens for b in batches.values()))
    micro = {lang: micro_batches(b, accumulation) for lang, b in batches.items()}
    pairs = [(lang, student) for lang in batches for student in group.student_for(lang)]
    sums: dict[str, dict[str, torch.Tensor]] = {}

    def pair_loss(lang: str, student: str, batch: TokenBatch, target: EncoderOutput) -> torch.Tensor:
        out = engine(student, batch.input_ids_BL, batch.attention_mask_BL, batch.labels_BL, masked_N=batch.masked_N, padded=batch.padded)
        loss, terms = loss_fn(
            out, target, batch.attention_mask_BL, batch.labels_BL, project=lambda m, h, s=student: group.project(s, m, h),
            masked_N=batch.masked_N, padded=batch.padded,
        )
        terms["loss"] = loss.detach()
        acc = sums.setdefault(f"{student}/{lang}", {})
        for name, value in terms.items():
            acc[name] = acc[name] + value / accumulation if name in acc else value / accumulation
        return loss

    if update == "sequential":
        # teacher outputs of every micro-batch are computed once and kept for all students of the language
        targets = {lang: [teacher_outputs(teacher, {lang: mb})[lang] for mb in micro[lang]] for lang in batches}
        for lang, student in pairs:
            set_active_students(optimizer, [student])
            for mb, target in zip(micro[lang], targets[lang]):
                engine.backward(pair_loss(lang, student, mb, target))
                engine.step()
    else:
        set_active_students(optimizer, group.languages)
        for i in range(accumulation):
            mbs = {lang: micro[lang][i] for lang in batches}
            targets = teacher_outputs(teacher, mbs)
            joint_loss = None
            for lang, student in pairs:
                loss = pair_loss(lang, student, mbs[lang], targets[lang])
                joint_loss = loss if joint_loss is None else joint_loss + loss
            engine.backward(joint_loss)
            engine.step()
    result.terms = _read_terms(sums, step)
    return result
