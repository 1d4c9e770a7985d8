"""Optimiser and schedule for the student group.

Algorithm 1 updates one student at a time while all students live in one DeepSpeed engine. A
plain AdamW step would still move the other students (weight decay, and momentum from earlier
steps even though their gradients are zero). Parameter groups therefore carry the names of the
students that own them, and `GroupMaskedAdamW` skips every group none of whose owners is being
updated. Groups survive DeepSpeed's ZeRO wrapping (it flattens each group's params but keeps the
group dicts), so this holds at every ZeRO stage.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class GroupMaskedAdamW(torch.optim.AdamW):
    """AdamW that leaves groups with `active == False` untouched (no decay, no moment update)."""

    def step(self, closure=None):
        hidden = [(group, group["params"]) for group in self.param_groups if not group.get("active", True)]
        for group, _ in hidden:
            group["params"] = []
        try:
            return super().step(closure)
        finally:
            for group, params in hidden:
                group["params"] = params


def set_active_students(optimizer: torch.optim.Optimizer, students: Iterable[str]) -> None:
    active = set(students)
    for group in optimizer.param_groups:
        group["active"] = bool(active & set(group["owners"]))


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name


def student_param_groups(students: dict[str, nn.Module], projections: nn.ModuleDict, weight_decay: float) -> list[dict]:
    """One group per (owning students, decay or not); a shared tensor appears once, owned by all its users."""
    owners: dict[int, set[str]] = {}
    named: dict[int, tuple[str, nn.Parameter]] = {}
    for student, module in students.items():
        extra = projections[student].named_parameters(prefix="proj") if student in projections else []
        for name, param in [*module.named_parameters(), *extra]:
            owners.setdefault(id(param), set()).add(student)
            named.setdefault(id(param), (name, param))
    groups: dict[tuple, dict] = {}
    for key, (name, param) in named.items():
        decay = not _no_decay(name, param)
        group_key = (tuple(sorted(owners[key])), decay)
        group = groups.setdefault(group_key, {"params": [], "owners": list(group_key[0]), "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(param)
    return list(groups.values())


def warmup_linear_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak lr, then linear decay to 0 at `total_steps` (thesis table 4.2)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
