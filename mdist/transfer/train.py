"""The fine-tuning loop shared by every transfer strategy, and batched prediction.

AdamW with weight decay except on biases and LayerNorms, linear warm-up then linear decay (thesis
table 4.2), gradient clipping at 1. A plain loop rather than HF Trainer: JOINT (two models, one
averaged loss, shared parameters) and SFT (each update mirrored onto a second model) are steps that
Trainer does not take. Task distillation adds the thesis's logit MSE (§3.3.6):
L = ½·(1/N)·Σ‖z_teacher − z_student‖² + ½·task loss, or read literally ½·logit MSE + ½·MLM
(`mdist.transfer.mlm`).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from tqdm import tqdm

from mdist.errors import NonFiniteLossError
from mdist.optim import no_weight_decay, warmup_linear_decay
from mdist.transfer import SCHEDULES
from mdist.transfer.model import TaskModel
from mdist.transfer.tasks import Batch, Task

TASK_DISTILLATION_WEIGHT = 0.5  # α = β = 0.5 (thesis §3.3.6)


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    warmup: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    schedule: str = SCHEDULES[0]


def lr_schedule(optimizer: torch.optim.Optimizer, settings: FitSettings, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate over the steps. "linear": warm-up over `warmup` of the steps, then linear decay
    to 0; "constant": the peak lr throughout, no warm-up (one reading of the "–" for few-shot in thesis table 4.2)."""
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{settings.schedule}' (known: {', '.join(SCHEDULES)})")
    if settings.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return warmup_linear_decay(optimizer, max(1, round(settings.warmup * total)), total)


def _length(feature: dict) -> int:
    ids = feature["input_ids"]
    return max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)


def batches(task: Task, features: Sequence[dict], order: Sequence[int], batch_size: int, pad_id: int, device: str) -> Iterator[tuple[list[int], Batch]]:
    for start in range(0, len(order), batch_size):
        index = list(order[start : start + batch_size])
        yield index, task.collate([features[i] for i in index], pad_id).to(device)


def _autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def logit_mse(student: torch.Tensor, teacher: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(1/N)·Σ_x ‖z_teacher − z_student‖² over examples (tagging: over labelled tokens)."""
    if student.dim() == 3:  # token logits [B, L, K]: only positions that carry a label
        keep = batch.labels != -100
        student, teacher = student[keep], teacher[keep]
    return (student.float() - teacher.float()).pow(2).sum(-1).mean()


def step_loss(models: Sequence[TaskModel], batch: Batch, teacher: TaskModel | None = None, mlm: Sequence[nn.Module] = ()) -> torch.Tensor:
    """The task loss averaged over `models` (JOINT: source and target student on the same batch),
    each mixed with the logit MSE to `teacher` when task distillation is on; `mlm` (one MLM loss per
    model) puts each model's MLM loss in the task loss's place."""
    teacher_logits = None
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(batch)
    losses = []
    for i, model in enumerate(models):
        logits = model(batch)
        loss = mlm[i](model, batch) if mlm else model.loss(logits.float(), batch)
        if teacher_logits is not None:
            loss = TASK_DISTILLATION_WEIGHT * logit_mse(logits, teacher_logits, batch) + (1 - TASK_DISTILLATION_WEIGHT) * loss
        losses.append(loss)
    return torch.stack(losses).mean()


def optimizer_groups(models: Sequence[nn.Module], weight_decay: float) -> list[dict]:
    """Trainable parameters of all models, each once (JOINT shares them by identity)."""
    seen: set[int] = set()
    decay, no_decay = [], []
    for model in models:
        for name, param in model.named_parameters():
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                (no_decay if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fit(
    models: Sequence[TaskModel],
    task: Task,
    features: Sequence[dict],
    pad_id: int,
    settings: FitSettings,
    device: str,
    desc: str,
    teacher: TaskModel | None = None,
    mirror: Sequence[tuple[nn.Parameter, nn.Parameter]] = (),
    mlm: Sequence[nn.Module] = (),
) -> dict:
    """Train the models' trainable parameters on `features`; the loss is averaged over `models`.

    `mirror` pairs (source, target): after every optimiser step the source's change is added to the
    target (SFT); `mlm` as in `step_loss`. Returns the mean loss of the last epoch and the step count.
    """
    groups = optimizer_groups(models, settings.weight_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("no parameter trains")
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    steps_per_epoch = -(-len(features) // settings.batch_size)
    total = steps_per_epoch * settings.epochs
    schedule = lr_schedule(optimizer, settings, total)
    generator = torch.Generator().manual_seed(settings.seed)
    for model in models:
        model.train()
    bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
    epoch_loss, done = 0.0, 0
    for _ in range(settings.epochs):
        epoch_loss = 0.0
        order = torch.randperm(len(features), generator=generator).tolist()
        for step, (_, batch) in enumerate(batches(task, features, order, settings.batch_size, pad_id, device), start=1):
            with _autocast(device):
                loss = step_loss(models, batch, teacher, mlm)
            loss.backward()
            done, value = done + 1, loss.item()
            if not math.isfinite(value):  # a diverged run is not a result: stop before its step, the progress line cleared first
                bar.close()
                NonFiniteLossError.check(done, desc, {"loss": value})
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], settings.max_grad_norm)
            before = [source.detach().clone() for source, _ in mirror]
            optimizer.step()
            with torch.no_grad():
                for (source, target), old in zip(mirror, before):
                    target.add_(source - old)
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_loss += value
            bar.update()
            bar.set_postfix(loss=f"{epoch_loss / step:.4f}")
    bar.close()
    return {"loss": epoch_loss / max(1, steps_per_epoch), "steps": total}


@torch.no_grad()
def predict(model: TaskModel, task: Task, features: Sequence[dict], pad_id: int, batch_size: int, device: str, desc: str = "evaluate") -> list:
    """The task's predictions for every feature, in input order (batches formed by length)."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: _length(features[i]))
    predictions: list = [None] * len(features)
    for index, batch in tqdm(batches(task, features, order, batch_size, pad_id, device), desc=desc, total=-(-len(order) // batch_size), dynamic_ncols=True, leave=False):
        with _autocast(device):
            logits = model(batch)
        for i, prediction in zip(index, task.predict(logits.float().cpu(), batch.to("cpu"))):
            predictions[i] = prediction
    model.train()
    return predictions
