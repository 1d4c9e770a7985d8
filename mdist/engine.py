"""DeepSpeed set-up: process group, the rendered engine configs, the student and teacher engines.

The DeepSpeed dicts are rendered here and only here: the ZeRO block comes from a `ds_configs/`
template, batch size, accumulation, clipping, offload and precision from the run config. The one
batch identity, train_batch_size = micro × accumulation × world, is computed (and checked) in
`batch_geometry`; nothing else states it.

Launchers (all end in `init_distributed`):
- `deepspeed [--hostfile H] -m mdist distill ...` and `torchrun ...` set RANK / WORLD_SIZE /
  LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
- plain `srun` (one task per GPU) sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; MASTER_ADDR is
  taken from the environment (the sbatch script exports it from `scontrol show hostnames`) or,
  failing that, the first host of SLURM_JOB_NODELIST when it is a plain name;
- a bare process is a world of one.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from importlib import resources

import deepspeed
import torch

from mdist.config import RunConfig


def _slurm_environment() -> None:
    """Translate SLURM task variables into torch.distributed's (only where a launcher did not set them)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return
    os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"], LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST", os.environ.get("SLURM_NODELIST", ""))
        if nodes and not any(ch in nodes for ch in "[],"):
            os.environ["MASTER_ADDR"] = nodes
    if "MASTER_PORT" not in os.environ and "SLURM_JOB_ID" in os.environ:
        os.environ["MASTER_PORT"] = str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Join (or create) the process group; works under deepspeed, torchrun, srun or a bare process."""
    _slurm_environment()
    if "WORLD_SIZE" not in os.environ and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())  # a bare process: never collide with another run's 29500
    for key, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        os.environ.setdefault(key, default)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False, verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def shutdown_distributed() -> None:
    """Leave the process group cleanly before the interpreter exits.

    Why: with gloo, each process group owns C++ worker threads (gloo's async work/listener threads
    and the TCPStore client). If the interpreter reaches exit with the group still alive, the
    `ProcessGroupGloo` object is destroyed during static destruction while those `std::thread`s
    are still joinable; a joinable `std::thread` destroyed runs `std::terminate()`, which prints
    "terminate called without an active exception" and aborts (SIGABRT, exit code 134) - only
    sometimes, depending on which rank's destructors run first and whether the peer has already
    closed its sockets. The fix is at the cause: every rank reaches a final barrier (so no peer
    is still mid-collective) and then destroys the process group explicitly, which joins those
    threads while the interpreter is still fully alive.
    """
    if not torch.distributed.is_initialized():
        return
    try:
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def load_template(name: str) -> dict:
    return json.loads((resources.files("mdist.ds_configs") / name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class BatchGeometry:
    """Sequences per language: per micro-batch and rank, accumulated per optimiser step, and globally."""

    micro: int
    accumulation: int
    world: int

    @property
    def per_rank(self) -> int:
        return self.micro * self.accumulation

    @property
    def global_batch(self) -> int:
        return self.micro * self.accumulation * self.world


def batch_geometry(cfg: RunConfig, world_size: int) -> BatchGeometry:
    """The single place where train_batch_size = micro × accumulation × world is defined and checked."""
    geo = BatchGeometry(cfg.train.batch_size, cfg.train.grad_accum, world_size)
    if min(geo.micro, geo.accumulation, geo.world) < 1:
        raise ValueError(f"bad batch geometry {geo}")
    assert geo.global_batch == geo.micro * geo.accumulation * geo.world
    return geo


def render_student_config(cfg: RunConfig, world_size: int) -> dict:
    stage = cfg.deepspeed.zero_stage
    ds = load_template(f"student_zero{stage}.json")
    geo = batch_geometry(cfg, world_size)
    ds.update(
        train_micro_batch_size_per_gpu=geo.micro,
        gradient_accumulation_steps=geo.accumulation,
        train_batch_size=geo.global_batch,
        gradient_clipping=cfg.train.grad_clip,
        steps_per_print=2**31 - 1,
        wall_clock_breakdown=False,
        # Our optimiser is a subclass (group-masked); DeepSpeed's ZeRO accepts it with this flag.
        zero_allow_untested_optimizer=True,
    )
    if cfg.deepspeed.offload_optimizer:
        if stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
        ds["zero_optimization"].update(load_template("offload_optimizer.json"))
    if stage == 3 and cfg.deepspeed.offload_params:
        ds["zero_optimization"].update(load_template("offload_params.json"))
    if torch.cuda.is_available():
        ds["bf16"] = {"enabled": True}
    if ds["train_batch_size"] != ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world_size:
        raise AssertionError("train_batch_size != micro × accumulation × world")  # never: one formula above
    return ds


def render_teacher_config(world_size: int) -> dict:
    """ZeRO-3 inference config for a partitioned teacher (no optimiser; batch keys are nominal)."""
    ds = load_template("teacher_zero3.json")
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=world_size, steps_per_print=2**31 - 1)
    if torch.cuda.is_available():
        ds["bf16"] = {"enabled": True}
    return ds


def student_engine(group: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: RunConfig, world_size: int):
    engine, *_ = deepspeed.initialize(model=group, optimizer=optimizer, config=render_student_config(cfg, world_size))
    if cfg.deepspeed.zero_stage == 3:
        keep_gathered(engine, head_parameters(group))
    return engine


def head_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """MLM decoder weight/bias of every HF masked-LM model inside `module` (deduplicated)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for sub in module.modules():
        decoder = getattr(getattr(sub, "lm_head", None), "decoder", None)
        if decoder is not None:
            for p in (decoder.weight, decoder.bias):
                if p is not None:
                    seen.setdefault(id(p), p)
    return list(seen.values())


def keep_gathered(engine, params: list[torch.nn.Parameter]) -> None:
    """Make ZeRO-3 parameters persistent (gathered on every rank, never released).

    `mdist.encode` reads `lm_head.decoder.weight/bias` as tensors for the chunked vocabulary loss,
    outside any module forward, so ZeRO-3's per-module fetch hooks never gather them. Marking them
    persistent (what DeepSpeed does for parameters under `stage3_param_persistence_threshold`) keeps
    a full copy per rank (V×D: 192 M values for XLM-R; the weight is tied to the word embeddings)
    while their gradients and optimiser states stay partitioned. ZeRO-3 re-gathers persistent
    parameters after every optimiser step, so the list is extended, not replaced.
    """
    holder = getattr(engine, "optimizer", None)
    persistent = getattr(holder, "persistent_parameters", None)
    if persistent is None:
        persistent = getattr(getattr(holder, "parameter_offload", None), "persistent_parameters", None)
    todo = [p for p in params if hasattr(p, "ds_id") and not p.ds_persist]
    if not todo:
        return
    for p in todo:
        p.ds_persist = True
        if persistent is not None:
            persistent.append(p)
    todo[0].all_gather(todo)


def teacher_engine(teacher: torch.nn.Module, world_size: int):
    """Wrap a (zero.Init-built) teacher in a ZeRO-3 inference engine; returns the engine."""
    engine, *_ = deepspeed.initialize(model=teacher, config=render_teacher_config(world_size))
    engine.eval()
    keep_gathered(engine, head_parameters(teacher))
    return engine


@contextlib.contextmanager
def partitioned_init(enabled: bool, world_size: int):
    """Build models inside this context to partition them across ranks as they are created (ZeRO-3).

    For Hugging Face `from_pretrained`, transformers switches to `deepspeed.zero.Init` and gathers
    each module's weights while loading when an `HfDeepSpeedConfig` with stage 3 is alive; the
    object is dropped on exit so that students built afterwards are ordinary modules.
    """
    if not enabled:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    ds_config = render_teacher_config(world_size)
    keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841 (transformers holds only a weak reference)
    try:
        yield ds_config
    finally:
        del keep_alive
        unset_hf_deepspeed_config()


@contextlib.contextmanager
def gathered(module: torch.nn.Module, modifier_rank: int | None = None):
    """Full parameters of a (possibly ZeRO-3 partitioned) module inside the block, on every rank."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield
