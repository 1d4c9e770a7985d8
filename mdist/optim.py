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


class _Masked:
    """Mixin: `step` skips parameter groups with `active == False` (see the module docstring)."""

    def step(self, *args, **kwargs):
        hidden = [(group, group["params"]) for group in self.param_groups if not group.get("active", True)]
        for group, _ in hidden:
            group["params"] = []
        try:
            return super().step(*args, **kwargs)
        finally:
            for group, params in hidden:
                group["params"] = params


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020): Adam moments with a per-tensor trust ratio ‖w‖/‖update‖ (clamped to [0, 10]).

    Decoupled weight decay is part of the update before the trust ratio, as in the paper. Bias
    correction on. A plain PyTorch implementation: correct wherever the optimiser sees whole
    tensors (ZeRO stage 0); config validation refuses it with ZeRO 1-3, whose flat partitions would
    turn the per-tensor ratio into a per-partition one.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01, max_trust: float = 10.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_trust=max_trust))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = float(state["step"])
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1**t)
                v_hat = state["exp_avg_sq"] / (1 - beta2**t)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                weight = p.float()
                if group["weight_decay"]:
                    update.add_(weight, alpha=group["weight_decay"])
                w_norm, u_norm = weight.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), (w_norm / u_norm).clamp(max=group["max_trust"]), torch.ones_like(w_norm))
                p.add_((update * trust).to(p.dtype), alpha=-group["lr"])
        return loss


class GroupMaskedAdamW(_Masked, torch.optim.AdamW):
    """AdamW that leaves groups with `active == False` untouched (no decay, no moment update)."""


class GroupMaskedLamb(_Masked, Lamb):
    """LAMB that leaves groups with `active == False` untouched."""


def build_optimizer(name: str, groups: list[dict], lr: float, offload: bool = False) -> torch.optim.Optimizer:
    """The student optimiser by name (adamw, adamw_fused, lamb), always group-masked.

    `adamw` on a GPU machine is torch's fused AdamW: one kernel per parameter group walks every
    tensor of the group, where the multi-tensor form runs about ten passes and the per-tensor loop
    one launch per tensor per op (issue #12: about 4 ms of a batch-64 step for 106 tensors). The
    update is the same AdamW; on a CPU-only machine `adamw` keeps torch's default loop and
    `adamw_fused` asks for the fused kernel on any device. Inactive groups are hidden from `step`
    (the masking mixin), so the fused kernel only ever sees the students being updated.

    With ZeRO-Offload on a GPU machine the fp32 master weights live in CPU memory and DeepSpeed's
    `DeepSpeedCPUAdam` (SIMD Adam over CPU tensors) is the fast choice; it iterates
    `param_groups` like torch's optimisers, so the same masking mixin applies to it. On a CPU-only
    machine (or without the compiled op) the torch AdamW does the same job.
    """
    if name == "lamb":
        return GroupMaskedLamb(groups, lr=lr)
    gpu = torch.cuda.is_available()
    if offload and gpu:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        cls = type("GroupMaskedCPUAdam", (_Masked, DeepSpeedCPUAdam), {})
        return cls(groups, lr=lr, adamw_mode=True)
    return GroupMaskedAdamW(groups, lr=lr, fused=name == "adamw_fused" or (gpu and not offload))


def set_active_students(optimizer: torch.optim.Optimizer, students: Iterable[str]) -> None:
    active = set(students)
    for group in optimizer.param_groups:
        group["active"] = bool(active & set(group["owners"]))


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
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
        decay = not no_weight_decay(name, param)
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
