"""DeepSpeed config rendering (one batch formula), optimisers (LAMB, masking), accumulation, offload."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdist.config import load_run_config
from mdist.engine import batch_geometry, render_student_config, render_teacher_config
from mdist.errors import ConfigError
from mdist.optim import GroupMaskedLamb, build_optimizer, set_active_students


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("micro,accum,world", [(4, 1, 1), (2, 3, 2), (1, 8, 4)])
def test_batch_identity_rendered_once(stage, micro, accum, world):
    cfg = load_run_config("tiny", [f"deepspeed.zero_stage={stage}", f"train.batch_size={micro}", f"train.grad_accum={accum}"])
    ds = render_student_config(cfg, world)
    assert ds["train_micro_batch_size_per_gpu"] == micro
    assert ds["gradient_accumulation_steps"] == accum
    assert ds["train_batch_size"] == micro * accum * world == batch_geometry(cfg, world).global_batch
    assert ds["zero_optimization"]["stage"] == stage
    assert "optimizer" not in ds and "scheduler" not in ds  # ours, stepped by us
    assert ds["gradient_clipping"] == cfg.train.grad_clip


def test_offload_and_persistence_blocks():
    cfg = load_run_config("tiny", ["deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true", "deepspeed.offload_params=true", "deepspeed.persistence_threshold=7"])
    zero = render_student_config(cfg, 2)["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_param_persistence_threshold"] == 7
    teacher = render_teacher_config(2, 5)["zero_optimization"]
    assert teacher["stage"] == 3 and teacher["stage3_param_persistence_threshold"] == 5


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["deepspeed.offload_optimizer=true"], "offload_optimizer"),
        (["deepspeed.zero_stage=2", "deepspeed.offload_params=true"], "offload_params"),
        (["train.optimizer=lamb", "deepspeed.zero_stage=2"], "lamb"),
        (["train.optimizer=sgd"], "train.optimizer"),
        (["train.grad_accum=0"], "train.grad_accum"),
    ],
)
def test_invalid_combinations(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_run_config("tiny", overrides)


def test_lamb_masks_inactive_groups_and_uses_trust_ratio():
    """Weights and gradients of varied sizes so that the trust ratio ‖w‖/‖u‖ is far from 1 (and clamped in one group)."""
    w0 = torch.arange(1.0, 17.0, dtype=torch.float64).reshape(4, 4)
    g0 = torch.linspace(-3.0, 2.0, 16, dtype=torch.float64).reshape(4, 4)
    a, b = torch.nn.Parameter(w0.float().clone()), torch.nn.Parameter(torch.ones(4))
    c = torch.nn.Parameter(torch.full((3,), 100.0))
    groups = [{"params": [a], "owners": ["x"], "weight_decay": 0.05}, {"params": [b], "owners": ["y"], "weight_decay": 0.0},
              {"params": [c], "owners": ["x"], "weight_decay": 0.0}]
    opt = build_optimizer("lamb", groups, lr=0.1)
    assert isinstance(opt, GroupMaskedLamb)
    a.grad, b.grad, c.grad = g0.float().clone(), torch.full((4,), 3.0), torch.tensor([1.0, -2.0, 0.5])
    set_active_students(opt, ["x"])
    opt.step()
    assert torch.equal(b, torch.ones(4)) and not opt.state[b]  # untouched: no update, no moments
    # first step, in float64: m̂ = g, v̂ = g², u = g/(|g|+eps) + wd·w, w <- w - lr·min(‖w‖/‖u‖, 10)·u
    u = g0 / (g0.abs() + 1e-6) + 0.05 * w0
    trust = (w0.norm() / u.norm()).item()
    assert trust > 3  # a LAMB without the trust ratio would move each weight by about lr only
    torch.testing.assert_close(a.detach().double(), w0 - 0.1 * trust * u, rtol=1e-6, atol=1e-6)
    # c: ‖w‖/‖u‖ = 100, clamped to max_trust = 10 (the ratio is per tensor)
    torch.testing.assert_close(c.detach().double(), 100.0 - 0.1 * 10.0 * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-5)


def _three_groups():
    """Two groups owned by student x (decay and not), one by y; gradients set."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=gen)) for shape in ((4, 3), (5,), (3, 2), (2,))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    groups = [{"params": params[:2], "owners": ["x"], "weight_decay": 0.1}, {"params": params[2:3], "owners": ["x"], "weight_decay": 0.0},
              {"params": params[3:], "owners": ["y"], "weight_decay": 0.1}]
    return params, groups


@pytest.mark.parametrize("gpu,fused", [(True, True), (False, False)])
def test_adamw_takes_the_fused_kernel_on_gpu_machines(monkeypatch, gpu, fused):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert build_optimizer("adamw", _three_groups()[1], lr=0.1).defaults["fused"] is fused


def test_fused_adamw_runs_one_kernel_per_active_group_and_matches_the_loop():
    """The launch-light update (issue #12): one fused AdamW call per active group whatever its tensor
    count, the inactive group untouched, the same weights as torch's per-tensor AdamW."""
    from torch.profiler import ProfilerActivity, profile

    params, groups = _three_groups()
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for ref, p in zip(reference, params):
        ref.grad = p.grad.clone()
    fused = build_optimizer("adamw_fused", groups, lr=0.1)
    loop = torch.optim.AdamW([{"params": reference[:2], "weight_decay": 0.1}, {"params": reference[2:3], "weight_decay": 0.0}], lr=0.1, foreach=False)
    set_active_students(fused, ["x"])
    before = params[3].detach().clone()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused.step()
    calls = [e.count for e in prof.key_averages() if e.key == "aten::_fused_adamw_"]
    assert calls == [2]  # two active groups, four tensors: one call each
    loop.step()
    for ref, p in zip(reference[:3], params[:3]):
        torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(params[3].detach(), before) and not fused.state[params[3]]


# ------------------------------------------------------------------ short real runs (one process)

def _run(out: Path, teacher: Path, *overrides: str) -> dict:
    from mdist.run import run_distillation

    cfg = load_run_config("tiny", ["strategy=tinybert", "train.steps=2", "tracking.enabled=false", f"teacher.path={teacher}", *overrides])
    run_distillation(cfg, out)
    return {n: load_file(out / "students" / n / "model.safetensors") for n in ("en", "tr")}


@pytest.fixture(scope="module")
def zero0_run(recipe_teacher_dir, tmp_path_factory) -> dict:
    """The plain run: ZeRO 0, AdamW, sequential updates, batch 4."""
    return _run(tmp_path_factory.mktemp("zero0"), recipe_teacher_dir)


@pytest.mark.parametrize("update", ["sequential", "joint"])
def test_accumulation_equals_one_big_micro_batch(update, recipe_teacher_dir, zero0_run, tmp_path):
    """B=4, A=1 vs B=2, A=2: same sequences, same masks, loss means over equal token counts -> same weights."""
    big = zero0_run if update == "sequential" else _run(tmp_path / "big", recipe_teacher_dir, "train.batch_size=4", f"train.update={update}")
    acc = _run(tmp_path / "acc", recipe_teacher_dir, "train.batch_size=2", "train.grad_accum=2", f"train.update={update}")
    for name in big:
        for key in big[name]:
            torch.testing.assert_close(acc[name][key], big[name][key], rtol=1e-4, atol=1e-5, msg=f"{name}/{key}")


@pytest.mark.parametrize(
    "overrides",
    [["deepspeed.zero_stage=1", "deepspeed.offload_optimizer=true"],
     ["deepspeed.zero_stage=3", "deepspeed.offload_params=true", "deepspeed.offload_optimizer=true"]],
    ids=["zero1_offload_optimizer", "zero3_offload_params"],
)
def test_offload_equals_zero0(overrides, recipe_teacher_dir, zero0_run, tmp_path):
    """ZeRO-1 with optimizer offload, and ZeRO-3 with parameter (and optimizer) offload, train the same
    students as the plain ZeRO-0 run. On this CPU machine the offloaded optimiser is torch's AdamW
    (group-masked) over DeepSpeed's CPU partitions: DeepSpeed's `DeepSpeedCPUAdam`, the one a CUDA
    machine uses (`mdist.optim.build_optimizer`), is not built or run here; and parameters already
    live in CPU memory, so this checks DeepSpeed's offload code path, not a memory saving."""
    students = _run(tmp_path, recipe_teacher_dir, *overrides)
    for name in zero0_run:
        for key, ref in zero0_run[name].items():
            torch.testing.assert_close(students[name][key], ref, rtol=1e-4, atol=1e-5, msg=f"{name}/{key}")


def test_lamb_engine_step_is_lr_times_weight_norm(recipe_teacher_dir, tmp_path):
    """One Algorithm-1 step with LAMB inside the DeepSpeed engine. LAMB's first step moves every tensor
    by lr·trust·‖u‖ = lr·‖w‖ (trust ratio ‖w‖/‖u‖ below its clamp), whatever the gradient's scale;
    en's own encoder weights take exactly one step (its update only; tr's is masked for them)."""
    from mdist.teacher import load_teacher

    students = _run(tmp_path, recipe_teacher_dir, "train.optimizer=lamb", "train.steps=1")
    teacher = load_teacher(recipe_teacher_dir)[0].state_dict()
    lr = load_run_config("tiny").train.lr  # warm-up 1 step: the first step runs at the peak lr
    checked = 0
    for key, trained in students["en"].items():
        if not key.startswith("roberta.encoder.layer.") or trained.ndim != 2:
            continue
        m = int(key.split(".")[3])
        start = teacher[key.replace(f"layer.{m}.", f"layer.{2 * m + 1}.")].double()  # uniform init: student m <- teacher 2m+1 of 4
        moved = (trained.double() - start).norm() / start.norm()
        assert abs(moved.item() - lr) < 1e-3 * lr, f"en/{key}: moved by {moved.item():.3g}·‖w‖, LAMB moves by lr·‖w‖ = {lr}"
        checked += 1
    assert checked == 2 * 6  # q, k, v, attention out, intermediate, output per layer


@pytest.mark.parametrize("update,updates_per_step", [("sequential", 2), ("joint", 1)])
def test_lr_schedule_advances_once_per_algorithm1_step(update, updates_per_step, recipe_teacher_dir, tmp_path, monkeypatch):
    """The lr every optimiser step of a 5-step run used, in both update modes: warm-up 2, linear decay to
    0 at step 5, one value per Algorithm-1 step (sequential: two students, two optimiser steps each)."""
    from mdist.optim import GroupMaskedAdamW

    used = []
    step = GroupMaskedAdamW.step

    def recording(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(GroupMaskedAdamW, "step", recording)
    _run(tmp_path, recipe_teacher_dir, "train.steps=5", "train.warmup_steps=2", "train.lr=1e-3", f"train.update={update}")
    per_step = [0.5e-3, 1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3]  # (s+1)/2 during warm-up, then (5-s)/3
    assert used == pytest.approx([lr for lr in per_step for _ in range(updates_per_step)], rel=1e-9)


def test_slurm_variables_become_torch_distributed_ones(monkeypatch):
    from mdist.engine import LAUNCHER_VARIABLES, _slurm_environment

    for key in LAUNCHER_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu017")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    _slurm_environment()
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("5", "8", "1")
    assert os.environ["MASTER_ADDR"] == "gpu017" and os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)
    monkeypatch.setenv("RANK", "0")  # a launcher's own variables win
    monkeypatch.setenv("SLURM_PROCID", "3")
    _slurm_environment()
    assert os.environ["RANK"] == "0"


@pytest.mark.parametrize("nodelist, first", [("gpu017", "gpu017"), ("gpu[017-020,031]", "gpu017"), ("n[1-2]", "n1"),
                                             ("node[3-4]-ib,login1", "node3-ib"), ("a1,b2", "a1"),
                                             ("rack[1-2]-node[01-04]", "rack1-node01")])
def test_the_first_host_of_a_slurm_node_list(nodelist, first):
    """Every rank of a multi-node srun meets on the node list's first host (tests/test_multinode.py runs it)."""
    from mdist.engine import first_host

    assert first_host(nodelist) == first


LOSE_RANK_1 = """\
import os, signal, torch
from mdist.engine import init_distributed, lost_peer
rank, _ = init_distributed(30)
torch.distributed.all_reduce(torch.ones(1))
if rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)  # as when its node dies
try:
    for _ in range(100):
        torch.distributed.all_reduce(torch.ones(1))
except RuntimeError as err:
    print(lost_peer(err))
"""


def test_a_rank_lost_mid_collective_is_one_line_naming_its_address():
    """Rank 1 killed between collectives: rank 0's gloo error at once, as one line with rank 1's address."""
    import os
    import re
    import subprocess
    import sys

    from mdist.engine import free_port, without_launcher_variables

    env = {**without_launcher_variables(os.environ), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    ranks = [subprocess.Popen([sys.executable, "-c", LOSE_RANK_1], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for r in (0, 1)]
    said = ranks[0].communicate(timeout=60)[0].strip().splitlines()[-1]
    ranks[1].wait(timeout=60)
    # gloo words it two ways, depending on whether the read fails or finds the socket closed
    peer = r"(\w[^\[]*\[127\.0\.0\.1\]:\d+: Connection (reset|closed) by peer|Connection closed by peer \[127\.0\.0\.1\]:\d+)"
    assert re.fullmatch(rf"rank 0: a collective with the other ranks failed: {peer} "
                        r"\(a rank's process or node is gone, or it did not answer within 30 s, dist.timeout_s\)", said), said
