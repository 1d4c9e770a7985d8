"""Algorithm 1: one distillation step over all languages and their students.

1. one equal-sized batch per language (from the batch source);
2. the teacher runs on every batch (no grad) and its outputs are kept;
3. for each language, for each student that owns it: student forward, loss, update.
`sequential` (the thesis) steps the optimiser after every (language, student) pair and updates
only that student's parameters (plus shared ones); `joint` sums all pairs' losses into one step.
The lr schedule advances once per Algorithm-1 step in both modes (so warm-up and decay are in the
thesis's step units however many optimiser steps a step makes).
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


def teacher_outputs(teacher: torch.nn.Module, batches: dict[str, TokenBatch]) -> dict[str, EncoderOutput]:
    with torch.no_grad():
        return {lang: encode(teacher, b.input_ids_BL, b.attention_mask_BL, b.labels_BL) for lang, b in batches.items()}


def _check_finite(loss: torch.Tensor, terms: dict[str, float], step: int, student: str, lang: str) -> None:
    if torch.isfinite(loss):
        return
    bad = [name for name, value in terms.items() if not torch.isfinite(torch.tensor(value))] or ["total"]
    raise NonFiniteLossError(
        f"step {step}: student '{student}' on language '{lang}': loss term '{bad[0]}' is not finite "
        f"({', '.join(f'{k}={v}' for k, v in terms.items())})"
    )


def distill_step(engine, optimizer, teacher, loss_fn: DistillLoss, batches: dict[str, TokenBatch], update: str, step: int) -> StepResult:
    group = engine.module
    targets = teacher_outputs(teacher, batches)
    result = StepResult(tokens=sum(b.tokens for b in batches.values()))
    joint_loss = None
    pairs = [(lang, student) for lang in batches for student in group.student_for(lang)]
    if update == "joint":
        set_active_students(optimizer, group.languages)
    for lang, student in pairs:
        batch = batches[lang]
        out = engine(student, batch.input_ids_BL, batch.attention_mask_BL, batch.labels_BL)
        loss, terms = loss_fn(out, targets[lang], batch.attention_mask_BL, batch.labels_BL, project=lambda m, h, s=student: group.project(s, m, h))
        terms["loss"] = float(loss)
        _check_finite(loss, terms, step, student, lang)
        result.terms[f"{student}/{lang}"] = terms
        if update == "sequential":
            set_active_students(optimizer, [student])
            engine.backward(loss)
            engine.step()
        else:
            joint_loss = loss if joint_loss is None else joint_loss + loss
    if joint_loss is not None:
        engine.backward(joint_loss)
        engine.step()
    return result
