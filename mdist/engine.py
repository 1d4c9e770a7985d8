"""DeepSpeed set-up: process group, the rendered engine config, the student engine.

The DeepSpeed dict is rendered here and only here: the ZeRO block comes from a `ds_configs/`
template, batch size, clipping and precision from the run config.
"""
from __future__ import annotations

import json
import os
from importlib import resources

import deepspeed
import torch

from mdist.config import RunConfig


def init_distributed() -> tuple[int, int]:
    """Join (or create) the process group; works under deepspeed, torchrun, srun or a bare process."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:  # plain srun: one task per GPU
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"], LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        os.environ.setdefault(key, default)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def load_template(name: str) -> dict:
    return json.loads((resources.files("mdist.ds_configs") / name).read_text(encoding="utf-8"))


def render_student_config(cfg: RunConfig, world_size: int) -> dict:
    ds = load_template(f"student_zero{cfg.deepspeed.zero_stage}.json")
    ds.update(
        train_micro_batch_size_per_gpu=cfg.train.batch_size,
        gradient_accumulation_steps=1,
        train_batch_size=cfg.train.batch_size * world_size,
        gradient_clipping=cfg.train.grad_clip,
        steps_per_print=2**31 - 1,
        wall_clock_breakdown=False,
    )
    if torch.cuda.is_available():
        ds["bf16"] = {"enabled": True}
    return ds


def student_engine(group: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: RunConfig, world_size: int):
    engine, *_ = deepspeed.initialize(model=group, optimizer=optimizer, config=render_student_config(cfg, world_size))
    return engine
