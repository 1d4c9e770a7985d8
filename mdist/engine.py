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
  failing that, is the first host of SLURM_JOB_NODELIST (`gpu[017-020]` → gpu017);
- a bare process is a world of one.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path

import deepspeed
import torch

from mdist.config import DistConfig, RunConfig
from mdist.errors import DistributedError


def _slurm_environment() -> None:
    """Translate SLURM task variables into torch.distributed's (only where a launcher did not set them)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return
    os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"], LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    nodes = os.environ.get("SLURM_JOB_NODELIST", os.environ.get("SLURM_NODELIST", ""))
    if "MASTER_ADDR" not in os.environ and nodes:
        os.environ["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in os.environ and "SLURM_JOB_ID" in os.environ:
        os.environ["MASTER_PORT"] = str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, as `scontrol show hostnames` would print it first:
    `gpu[017-020,031]` → gpu017, `node[3-4]-ib,login1` → node3-ib, `a1,b2` → a1. Every rank of every
    node computes the same name, so all meet there (not on 127.0.0.1, which is each node's own)."""
    prefix, first, suffix = re.match(r"([^\[,]*)(?:\[([^\]\-,]*)[^\]]*\]([^,]*))?", nodelist).groups()
    host = prefix + (first or "") + (suffix or "")
    return first_host(host) if "[" in host else host  # rack[1-2]-node[01-04]: one bracket group at a time


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_launcher_variables(env: dict) -> dict:
    """`env` minus the torch.distributed rendezvous variables: for starting a new, separate run."""
    return {k: v for k, v in env.items() if k not in LAUNCHER_VARIABLES}


_timeout = timedelta(seconds=DistConfig.timeout_s)  # of the process group this process joined
_barrier_group = None  # a gloo group for `barrier` when the default group is NCCL (None: the default group)


def init_distributed(timeout_s: float = DistConfig.timeout_s) -> tuple[int, int]:
    """Join (or create) the process group; works under deepspeed, torchrun, srun or a bare process.

    Every wait on the other ranks is bounded by `timeout_s` (`dist.timeout_s`): forming the group,
    `barrier`, and each collective of training (gloo raises; NCCL's watchdog aborts the process)."""
    global _timeout, _barrier_group
    _slurm_environment()
    if "WORLD_SIZE" not in os.environ and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())  # a bare process: never collide with another run's 29500
    for key, default in zip(LAUNCHER_VARIABLES, ("0", "1", "0", "127.0.0.1", "29500")):
        os.environ.setdefault(key, default)
    if not torch.distributed.is_initialized():
        _timeout = timedelta(seconds=timeout_s)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=_timeout)
        except torch.distributed.DistError as err:
            env = os.environ
            raise DistributedError(f"rank {env['RANK']} of {env['WORLD_SIZE']}: the process group at {env['MASTER_ADDR']}:{env['MASTER_PORT']} "
                                   f"did not form within {timeout_s:g} s (dist.timeout_s): {_first_line(err)}") from None
        if backend != "gloo" and torch.distributed.get_world_size() > 1:
            _barrier_group = torch.distributed.new_group(backend="gloo")  # monitored barriers are gloo's
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


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
    global _barrier_group
    if not torch.distributed.is_initialized():
        return
    try:
        barrier("run end")
    finally:
        torch.distributed.destroy_process_group()
        _barrier_group = None
        _forget_deepspeed_groups()


def _forget_deepspeed_groups() -> None:
    """Drop DeepSpeed's module-level caches of the destroyed groups, so that a later
    `init_distributed` in the same process (tests, notebooks) builds fresh ones."""
    from deepspeed.utils import groups

    def holds_group(value) -> bool:
        if isinstance(value, torch.distributed.ProcessGroup):
            return True
        if isinstance(value, dict):
            return any(holds_group(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(holds_group(v) for v in value)
        return False

    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name.isupper() and holds_group(value):
            setattr(groups, name, type(value)() if isinstance(value, (dict, list)) else None)


def barrier(name: str) -> None:
    """Every rank waits here for the others, at most `dist.timeout_s`; then it stops with one line naming
    the barrier and who did not arrive (rank 0 knows which ranks; the others wait on rank 0). A rank
    whose process or node is gone closes its connection: that ends the wait at once, and says so."""
    if world_size() == 1:
        return
    started = time.monotonic()
    try:
        torch.distributed.monitored_barrier(group=_barrier_group, timeout=_timeout, wait_all_ranks=True)
    except RuntimeError as err:
        missing = re.search(r"Ranks? ([\d, ]+) failed to pass", str(err))
        who = f"rank(s) {missing.group(1).strip()}" if missing else "rank 0 (or a rank it waits for)"
        waited, limit = time.monotonic() - started, _timeout.total_seconds()
        if waited < 0.9 * limit:
            raise DistributedError(f"rank {torch.distributed.get_rank()}: {who} left before the barrier '{name}' (the connection "
                                   f"closed after {waited:.1f} s: the process or its node is gone)") from None
        raise DistributedError(f"rank {torch.distributed.get_rank()}: {who} did not reach the barrier '{name}' "
                               f"within {limit:g} s (dist.timeout_s)") from None


def lost_peer(err: RuntimeError) -> DistributedError | None:
    """A collective's gloo transport error (`Read error [10.0.0.12]:41234: Connection reset by peer`: that
    peer's process or node is gone; or a timeout: it did not answer within `dist.timeout_s`) as one line
    naming the peer's address; None for any other error. (NCCL's watchdog aborts the process instead.)"""
    text = str(err)
    if "gloo/transport" not in text:
        return None
    detail = re.sub(r"^\[[^\]]*\] ", "", text).split(". ")[0]
    return DistributedError(f"rank {torch.distributed.get_rank()}: a collective with the other ranks failed: {detail} (a rank's process "
                            f"or node is gone, or it did not answer within {_timeout.total_seconds():g} s, dist.timeout_s)")


def world_size() -> int:
    """The process group's size (1 without torch.distributed)."""
    return torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1


def gather_objects(item) -> list:
    """Every rank's `item`, in rank order (just [item] without torch.distributed)."""
    world = world_size()
    if world == 1:
        return [item]
    items = [None] * world
    torch.distributed.all_gather_object(items, item)
    return items


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
        # Our optimiser is chosen on purpose (group-masked; DeepSpeedCPUAdam-based on GPU machines).
        ds["zero_force_ds_cpu_optimizer"] = False
    if stage == 3 and cfg.deepspeed.offload_params:
        ds["zero_optimization"].update(load_template("offload_params.json"))
    if stage == 3 and cfg.deepspeed.persistence_threshold is not None:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = cfg.deepspeed.persistence_threshold
    if torch.cuda.is_available():
        ds["bf16"] = {"enabled": True}
    if ds["train_batch_size"] != ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world_size:
        raise AssertionError("train_batch_size != micro × accumulation × world")  # never: one formula above
    return ds


def render_teacher_config(world_size: int, persistence_threshold: int | None = None, bf16: bool = False) -> dict:
    """ZeRO-3 inference config for a partitioned teacher (no optimiser; batch keys are nominal); `bf16`: its
    weights (partitions and gathered layers) and outputs in bf16."""
    ds = load_template("teacher_zero3.json")
    if persistence_threshold is not None:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = persistence_threshold
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=world_size, steps_per_print=2**31 - 1)
    if bf16:
        ds["bf16"] = {"enabled": True}
    return ds


def student_engine(group: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: RunConfig, world_size: int):
    engine, *_ = deepspeed.initialize(model=group, optimizer=optimizer, config=render_student_config(cfg, world_size))
    if cfg.deepspeed.zero_stage == 3:
        register_head_parameters(group)
    return engine


def register_head_parameters(model: torch.nn.Module) -> None:
    """Tell ZeRO-3 that the MLM decoder weight/bias are used outside their module's forward.

    `mdist.encode` runs `model.base_model(...)` and then hands `lm_head.decoder.weight/bias` to the
    chunked vocabulary loss as tensors, so ZeRO-3's per-module fetch hooks would never gather them
    (the loss would see empty shards). Registering them as external parameters of each base model
    makes DeepSpeed gather them when that forward starts and keep them until the optimiser step
    (students: gradients then flow into the partitioned tensor as usual) or for good (the frozen
    teacher has no step). Cost: one full V×D tensor per rank (the tied word embeddings).
    Persistence (`ds_persist`) is not enough: DeepSpeed releases even persistent parameters
    after a forward until its trace is complete.
    """
    for sub in model.modules():
        decoder = getattr(getattr(sub, "lm_head", None), "decoder", None)
        base = getattr(sub, "base_model", None)
        if decoder is None or base is None:
            continue
        for p in (decoder.weight, decoder.bias):
            if p is not None and hasattr(p, "ds_id"):
                deepspeed.zero.register_external_parameter(base, p)
                p.is_external_param = True  # what DeepSpeed sets for parameters it finds dangling itself


def teacher_engine(teacher: torch.nn.Module, world_size: int, persistence_threshold: int | None = None, bf16: bool = False):
    """Wrap a (zero.Init-built) teacher in a ZeRO-3 inference engine; returns the engine."""
    engine, *_ = deepspeed.initialize(model=teacher, config=render_teacher_config(world_size, persistence_threshold, bf16))
    engine.eval()
    register_head_parameters(teacher)
    return engine


def _checkpoint_tensors(path: Path):
    """Yield (name, lazy loader) over a HF directory's weight files without reading all of them at once."""
    from mdist.teacher import weight_files

    for file in weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    yield key, (lambda h=handle, k=key: h.get_tensor(k))
        else:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            for key in state:
                yield key, (lambda s=state, k=key: s[k])


def load_partitioned_teacher(path: Path, world_size: int, persistence_threshold: int | None = None, bf16: bool = False):
    """Build the teacher partitioned across ranks from the start (ZeRO-3), then fill it tensor by tensor.

    The model is constructed inside `deepspeed.zero.Init`, so each rank allocates only its 1/W
    shard of every parameter; weights are then read one tensor at a time (safetensors / mmap) and
    scattered into the shards with `GatheredParameters(modifier_rank=0)`. Peak memory per rank is
    its shards plus one full tensor, never the whole model. (transformers' own route,
    `HfDeepSpeedConfig` + `from_pretrained`, would need the `accelerate` package.)
    """
    from transformers import AutoConfig, AutoModelForMaskedLM

    from mdist.capture import ATTENTION_IMPLEMENTATION
    from mdist.errors import TeacherError
    from mdist.teacher import check_teacher_dir, freeze, load_teacher_tokenizer

    tokenizer = load_teacher_tokenizer(path, check_teacher_dir(path))
    config = AutoConfig.from_pretrained(str(path))
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    from transformers.initialization import no_init_weights

    # no random init: every tensor is overwritten below, and init code indexes into (empty) shards
    with deepspeed.zero.Init(config_dict_or_path=render_teacher_config(world_size, persistence_threshold, bf16)), no_init_weights():
        model = AutoModelForMaskedLM.from_config(config, attn_implementation=ATTENTION_IMPLEMENTATION)
    model.tie_weights()  # transformers skips tying inside zero.Init; the decoder must be the embedding tensor
    by_name: dict[str, torch.nn.Parameter] = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers())
    filled: set[int] = set()
    for key, load in _checkpoint_tensors(path):
        target = by_name.get(key)
        if target is None:
            if key in buffers:
                buffers[key].copy_(load())
            continue
        if id(target) in filled:
            continue  # a tied alias (decoder weight = word embeddings)
        with deepspeed.zero.GatheredParameters([target], modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                tensor = load()
                if tuple(tensor.shape) != tuple(target.shape):
                    raise TeacherError(f"teacher '{path}': tensor '{key}' has shape {tuple(tensor.shape)}, model expects {tuple(target.shape)}")
                with torch.no_grad():
                    target.copy_(tensor)
        filled.add(id(target))
    missing = sorted({name for name, p in model.named_parameters() if id(p) not in filled})
    if missing:
        raise TeacherError(f"teacher '{path}': no weights for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return freeze(model), tokenizer


@contextlib.contextmanager
def gathered(module: torch.nn.Module, modifier_rank: int | None = None):
    """Full parameters of a (possibly ZeRO-3 partitioned) module inside the block, on every rank."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield
