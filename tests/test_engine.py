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
    a, b = torch.nn.Parameter(torch.ones(4, 4)), torch.nn.Parameter(torch.ones(4))
    opt = build_optimizer("lamb", [{"params": [a], "owners": ["x"], "weight_decay": 0.0}, {"params": [b], "owners": ["y"], "weight_decay": 0.0}], lr=0.1)
    assert isinstance(opt, GroupMaskedLamb)
    a.grad, b.grad = torch.full((4, 4), 2.0), torch.full((4,), 3.0)
    set_active_students(opt, ["x"])
    opt.step()
    assert torch.equal(b, torch.ones(4)) and not opt.state[b]  # untouched: no update, no moments
    # first step: m̂/√v̂ = 1 everywhere, ‖w‖ = ‖update‖ = 4, trust ratio 1 -> w - lr
    torch.testing.assert_close(a.detach(), torch.full((4, 4), 0.9))


# ------------------------------------------------------------------ short real runs (one process)

def _run(out: Path, teacher: Path, *overrides: str) -> dict:
    from mdist.run import run_distillation

    cfg = load_run_config("tiny", ["strategy=tinybert", "train.steps=2", "tracking.enabled=false", f"teacher.path={teacher}", *overrides])
    run_distillation(cfg, out)
    return {n: load_file(out / "students" / n / "model.safetensors") for n in ("en", "tr")}


@pytest.mark.parametrize("update", ["sequential", "joint"])
def test_accumulation_equals_one_big_micro_batch(update, recipe_teacher_dir, tmp_path):
    """B=4, A=1 vs B=2, A=2: same sequences, same masks, loss means over equal token counts -> same weights."""
    big = _run(tmp_path / "big", recipe_teacher_dir, "train.batch_size=4", f"train.update={update}")
    acc = _run(tmp_path / "acc", recipe_teacher_dir, "train.batch_size=2", "train.grad_accum=2", f"train.update={update}")
    for name in big:
        for key in big[name]:
            torch.testing.assert_close(acc[name][key], big[name][key], rtol=1e-4, atol=1e-5, msg=f"{name}/{key}")


@pytest.mark.parametrize("overrides", [["train.optimizer=lamb"], ["deepspeed.zero_stage=1", "deepspeed.offload_optimizer=true"]])
def test_lamb_and_offload_train(overrides, recipe_teacher_dir, tmp_path):
    from mdist.teacher import load_teacher

    students = _run(tmp_path, recipe_teacher_dir, *overrides)
    teacher, _ = load_teacher(recipe_teacher_dir)
    key = "roberta.encoder.layer.{}.attention.self.query.weight"
    moved = students["en"][key.format(0)]
    assert torch.isfinite(moved).all()
    # student layer 1 starts as teacher layer 2 of 4 (uniform mapping); training moved it
    assert not torch.allclose(moved, teacher.state_dict()[key.format(1)])


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
