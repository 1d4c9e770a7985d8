"""`mdist plan` and its memory model (mdist.memory, mdist.plan): parameter counts against Hugging Face
models, activation bytes against the tensors autograd really saves, the layout search by hand, the
command's exit codes, and the README table against what the command prints now."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaXLConfig, XLMRobertaXLForMaskedLM

from mdist.capture import ATTENTION_IMPLEMENTATION
from mdist.cli import main
from mdist.config import StudentsConfig, load_run_config
from mdist.encode import encode
from mdist.memory import GIB, XLMR, Layout, Shape, Students, Workload, activation_bytes_per_token_layer, per_rank, shape_from_config
from mdist.plan import plan, teacher_of

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"xlmr": (XLMRobertaConfig, XLMRobertaForMaskedLM), "xlmr_xl": (XLMRobertaXLConfig, XLMRobertaXLForMaskedLM)}


def _model(family: str, layers: int, hidden: int = 32, ffn: int = 64, heads: int = 4):
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(0)
    return model_cls(config_cls(vocab_size=300, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                                max_position_embeddings=66, type_vocab_size=1))


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_counts_the_parameters_hugging_face_builds(family):
    model = _model(family, layers=3)
    shape = shape_from_config(model.config.to_dict())
    assert shape.pre_ln == (family == "xlmr_xl")
    assert shape.params == sum(p.numel() for p in model.parameters())  # the decoder is tied: counted once


def test_published_sizes_are_the_model_cards():
    """XLM-R base 270 M + embeddings → 278 M, large 560 M, XL 3.5 B, XXL 10.7 B (Goyal et al. 2021)."""
    billions = {name: round(shape.params / 1e9, 2) for name, shape in XLMR.items()}
    assert billions == {"xlm-roberta-base": 0.28, "xlm-roberta-large": 0.56, "xlm-roberta-xl": 3.48, "xlm-roberta-xxl": 10.71}


@pytest.mark.parametrize("hidden", [None, 16, 64])
def test_student_group_parameters_are_the_real_groups(tiny_teacher_dir, hidden):
    """Unique parameters of a real StudentGroup (shared embeddings and head once, projections when the width
    differs) equal the model's count."""
    from mdist.students import StudentGroup
    from mdist.teacher import load_teacher

    teacher, _ = load_teacher(tiny_teacher_dir)
    cfg = StudentsConfig(groups={"en": ["en"], "tr": ["tr"], "de": ["de"]}, layers=2, hidden=hidden, init="teacher" if hidden is None else "random")
    group = StudentGroup(teacher, cfg, teacher.config.hidden_size)
    unique = sum(p.numel() for p in {id(p): p for p in group.parameters()}.values())
    assert Students(3, 2, hidden).params(shape_from_config(teacher.config.to_dict())) == unique


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_bytes_are_what_autograd_saves_on_the_cpu(family):
    """A training forward's saved tensors, counted by storage with saved-tensor hooks (what backward holds),
    per layer and token: the 3-layer model minus the 1-layer one, within 4 % of the model's constant."""
    batch, length = 4, 48

    def saved_bytes(layers: int) -> int:
        model = _model(family, layers, hidden=64, ffn=256).train()
        model.config._attn_implementation = ATTENTION_IMPLEMENTATION
        ids = torch.randint(5, 299, (batch, length), generator=torch.Generator().manual_seed(0))
        labels = torch.full_like(ids, -100)
        labels[:, ::7] = ids[:, ::7]
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            encode(model, ids, torch.ones_like(ids), labels, masked_N=(labels.reshape(-1) != -100).nonzero().squeeze(1), padded=False)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(n for ptr, n in storages.items() if ptr not in weights)

    measured = (saved_bytes(3) - saved_bytes(1)) / 2 / (batch * length)
    modelled = activation_bytes_per_token_layer(Shape(300, 64, 256, 4, 1), length, gpu=False)
    assert abs(measured / modelled - 1) < 0.04, (measured, modelled)  # today 1.002 (XLM-R), 0.965 (XL)


def test_xl_recipe_by_hand():
    """The XL recipe on 8 × 80 GB: its own layout (students and teacher ZeRO-3) fits; the parts by hand."""
    cfg = load_run_config("xlmr-xl-monoshot", check_paths=False)
    teacher = teacher_of(cfg)
    assert teacher == XLMR["xlm-roberta-xl"]
    result = plan(cfg, teacher, 8, 80)
    assert result.fits_as_configured and result.fitting == Layout(3, True, False, 8, 2)
    b = result.configured_bytes
    V, D = 250_880, 2560
    assert b["teacher"] == pytest.approx(teacher.params * 2 / 8 + V * D * 2)
    P = 2 * 18 * teacher.layer_params + teacher.shared_params - 2 * D + 2 * 2 * D  # two 18-layer students, shared embeddings + head; pre-LN: no embedding norm, a final norm each
    assert b["optimizer"] == pytest.approx(P * 12 / 8)
    assert b["teacher outputs"] == pytest.approx(2 * 2 * (3 * 36 + 1) * 8 * 512 * D * 2)  # languages × micro-batches kept, bf16
    assert result.as_dict()["fit.zero_stage"] == 3 and result.as_dict()["tokens_per_s"] > 0


def test_xl_recipe_head_gradients_and_step_peak_by_hand():
    """The transients of the XL recipe's students (ZeRO 3, bf16, 2560 wide): the tied matrix's gradient and its
    two flat copies, 3·V·D'·2; on a GPU no optimiser-step temporaries (fused AdamW); total = kept + the largest moment."""
    cfg = load_run_config("xlmr-xl-monoshot", check_paths=False)
    b = plan(cfg, teacher_of(cfg), 8, 80).configured_bytes
    assert b["head gradients"] == 3 * 250_880 * 2560 * 2 and b["optimizer step"] == 0
    backward_start = b["activations"] + b["loss terms"] + b["logits"] + 250_880 * 2560 * 2  # + the decoder's gradient
    assert b["step peak"] == pytest.approx(max(backward_start, b["head gradients"]))
    kept = sum(b[p] for p in ("teacher", "params", "grads", "optimizer", "teacher outputs", "buffers"))
    assert b["total"] == pytest.approx(kept + b["step peak"])


def test_a_bf16_teacher_on_cpu_ranks_halves_the_teacher_and_its_outputs():
    """`teacher.dtype: bf16` on CPU ranks: the teacher's partitions, gathered decoder and kept outputs at 2 bytes
    (auto: 4 there); the students' parts unchanged."""
    sets = ["teacher.zero3=true", "deepspeed.zero_stage=3", "train.batch_size=1", "train.grad_accum=1", "train.seq_len=128"]
    auto, half = (plan(load_run_config("xlmr-xl-monoshot", [*sets, f"teacher.dtype={d}"], check_paths=False), XLMR["xlm-roberta-xl"], 2, 64, gpu=False).configured_bytes
                  for d in ("auto", "bf16"))
    s = XLMR["xlm-roberta-xl"]
    assert auto["teacher"] == s.params * 4 / 2 + s.head_matrix * 4 and half["teacher"] == auto["teacher"] / 2
    assert half["teacher outputs"] == auto["teacher outputs"] / 2
    assert all(half[p] == auto[p] for p in ("params", "grads", "optimizer", "head gradients"))


def test_lamb_at_stage_0_halves_the_micro_batch_keeping_the_global_batch_and_the_kept_teacher_outputs():
    """lamb needs ZeRO stage 0 (the config's rule), so on one 22 GB GPU only a smaller micro-batch helps: 16 needs
    27.7 GiB, 8 (accumulating 2) 21.3 GiB, over 22 · 0.9 = 19.8; 4 (accumulating 4) 18.1 GiB fits. The teacher outputs
    kept for the step are the same at every micro-batch."""
    cfg = load_run_config("xlmr-large-monoshot", ["deepspeed.zero_stage=0", "train.optimizer=lamb", "loss.kernels=torch"], check_paths=False)
    result = plan(cfg, teacher_of(cfg), 1, 22)
    assert not result.fits_as_configured
    assert result.fitting == Layout(0, False, False, 4, 4)
    assert result.fitting_bytes["teacher outputs"] == result.configured_bytes["teacher outputs"]
    assert result.fitting_bytes["total"] <= 22 * GIB * 0.9 < result.configured_bytes["total"]


def test_plan_command_prints_parts_and_exits_2_when_nothing_fits(capsys):
    assert main(["plan", "--recipe", "xlmr-xl-monoshot", "--gpus", "8", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    for part in ("teacher", "params", "grads", "optimizer", "teacher outputs", "activations", "logits", "buffers", "total"):
        assert re.search(rf"^{part} +\d+\.\d\d", out, re.M), part
    assert "tokens/s on 8 GPU(s)" in out and "MFU measured by benchmarks/throughput.py" in out
    assert main(["plan", "--recipe", "xlmr-xxl-monoshot", "--gpus", "1", "--gpu-mem", "16"]) == 2
    captured = capsys.readouterr()
    assert "nothing fits" in captured.out and captured.err == "mdist plan: error: nothing fits on 1 GPU(s) of 16 GiB: the smallest layout needs more; add GPUs\n"
    assert main(["plan", "--recipe", "xlmr-large-monoshot", "--json", "--set", "train.batch_size=4"]) == 0
    assert json.loads(capsys.readouterr().out)["fit.micro_batch"] == 4


def test_plan_command_plans_cpu_ranks_as_distill_checks_them(capsys):
    """--cpu: fp32 parts and the whole budget per rank, the same plan `mdist distill` refuses CPU ranks with; no GPU tokens/s."""
    cfg = load_run_config("xlmr-large-monoshot", ["teacher.zero3=true", "deepspeed.zero_stage=3"], check_paths=False)
    cpu = plan(cfg, teacher_of(cfg), 2, 7, gpu=False)
    T = cpu.work.teacher
    assert cpu.configured_bytes["teacher"] == T.params * 4 / 2 + T.head_matrix * 4  # fp32 on CPU ranks
    assert main(["plan", "--recipe", "xlmr-large-monoshot", "--cpu", "--gpus", "2", "--gpu-mem", "7", "--set", "teacher.zero3=true", "--set", "deepspeed.zero_stage=3"]) == 2
    captured = capsys.readouterr()
    assert re.search(rf"^teacher +{cpu.configured_bytes['teacher'] / GIB:.2f}", captured.out, re.M)
    assert "budget                       7.00  (2 × 7 GiB)" in captured.out and "tokens/s" not in captured.out
    assert captured.err == "mdist plan: error: nothing fits on 2 CPU rank(s) of 7 GiB: the smallest layout needs more; add ranks\n"
    assert main(["plan", "--recipe", "xlmr-large-monoshot", "--cpu", "--json", "--gpus", "2", "--gpu-mem", "64"]) == 0
    assert "tokens_per_s" not in json.loads(capsys.readouterr().out)


def test_plan_command_names_an_unknown_teacher(capsys):
    assert main(["plan", "--recipe", "xlmr-large-monoshot", "--set", "teacher.path=/nowhere/my-model"]) == 2
    assert "config key 'teacher.path': '/nowhere/my-model' has no config.json and names no published XLM-R size" in capsys.readouterr().err


def test_readme_table_is_what_mdist_plan_prints_now(capsys):
    assert main(["plan", "--table"]) == 0
    table = capsys.readouterr().out.strip()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### How many GPUs a run needs", 1)[1].split("\n#", 1)[0]
    assert table in section, "README's table differs from `mdist plan --table`: paste the command's output"


@pytest.mark.parametrize("recipe", ["xlmr-base-wide-students", "xlmr-large-monoshot", "xlmr-xl-monoshot", "xlmr-xxl-monoshot"])
def test_scaled_recipes_pass_the_checks_against_their_teachers(recipe):
    """Student depth, width and init against the published teacher each recipe names (no teacher files needed)."""
    from mdist.config import check_against_teacher

    cfg = load_run_config(recipe, check_paths=False)
    t = teacher_of(cfg)
    check_against_teacher(cfg, {"num_hidden_layers": t.layers, "hidden_size": t.hidden, "num_attention_heads": t.heads, "max_position_embeddings": t.positions, "pad_token_id": 1})
    assert cfg.students.layers == t.layers // 2 or cfg.students.hidden == 2 * t.hidden


def test_distill_refusal_says_by_how_much_and_what_fits():
    from mdist.plan import refusal

    cfg = load_run_config("xlmr-xl-monoshot", ["deepspeed.zero_stage=0", "teacher.zero3=false"], check_paths=False)
    result = plan(cfg, teacher_of(cfg), 8, 80)
    P = result.work.students.params(result.work.teacher)
    # bf16 at ZeRO 0: DeepSpeed's BF16_Optimizer adds fp32 master weights and gradients to Adam's m and v
    assert (result.configured_bytes["grads"], result.configured_bytes["optimizer"]) == (P * (2 + 4), P * (8 + 4))
    need = result.configured_bytes["total"] / GIB
    line = refusal(result)
    assert line.startswith(f"the run needs {need:,.2f} GiB per rank, {need - 72:,.2f} GiB more than the 72.00 GiB budget of each of 8 rank(s) (largest part: optimizer")
    assert line.endswith("; would fit: --set deepspeed.zero_stage=1 --set teacher.zero3=false --set deepspeed.offload_optimizer=false --set train.batch_size=8 --set train.grad_accum=2")
    assert refusal(plan(cfg, teacher_of(cfg), 8, 200)) is None
