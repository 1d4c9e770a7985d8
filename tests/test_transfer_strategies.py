"""Invariants of the transfer strategies (thesis §3.3), checked on the tensors of real task models.

Source and target students are two different 2-layer models cut from one tiny teacher (bottom and
top layers): the same architecture and tokenizer, different weights, as two students of a run.
"""
from __future__ import annotations

import random

import pytest
import torch

from mdist.baseline import export_baseline
from mdist.transfer.adapters import BottleneckAdapter, OutputWithAdapter
from mdist.transfer.model import ModelSpec, build_task_model, load_task_model, save_task_model
from mdist.transfer.runner import TransferConfig, build_models, train_and_transfer, trainable_names
from mdist.transfer.shots import nested_shots
from mdist.transfer.strategies import STRATEGIES, get_strategy
from mdist.transfer.tasks import Batch, PairExample, get_task
from mdist.transfer.train import FitSettings, logit_mse, lr_schedule, step_loss

TASK = get_task("xnli")
SETTINGS = FitSettings(epochs=2, batch_size=8, lr=1e-2, seed=0)


@pytest.fixture(scope="module")
def students(tiny_teacher_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    export_baseline(tiny_teacher_dir, 2, "bottom", root / "en")
    export_baseline(tiny_teacher_dir, 2, "top", root / "tr")
    return root / "en", root / "tr"


@pytest.fixture(scope="module")
def examples(synthetic_docs):
    rng = random.Random(0)
    sentences = [s for doc in synthetic_docs["en"][:20] for s in doc.split(" . ") if s]
    return [PairExample(rng.choice(sentences), rng.choice(sentences), rng.randrange(3)) for _ in range(24)]


def _config(students, strategy: str) -> TransferConfig:
    src, trg = students
    return TransferConfig(task="xnli", strategy=strategy, src_model=src, trg_model=trg, train=src, eval=src, out=src, seed=3)


def _fresh(path, strategy: str):
    """The task model a strategy starts from (same seed, so the same fresh head / layers / adapters)."""
    s = get_strategy(strategy)
    torch.manual_seed(3)
    return build_task_model(ModelSpec("xnli", str(path), s.extra_layers, s.adapters), "cpu")[0]


def _state(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _train(students, strategy: str, examples):
    models = build_models(_config(students, strategy), get_strategy(strategy))
    features = TASK.encode(examples, models.tokenizers["train"], 64)
    before = {"trained": [_state(m) for m in models.trained], "evaluated": _state(models.evaluated)}
    train_and_transfer(models, get_strategy(strategy), TASK, features, models.tokenizers["train"].pad_token_id, SETTINGS, "cpu")
    return models, before


def _changed(before: dict, model) -> set[str]:
    return {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}


def test_every_named_strategy_resolves_and_freeze_takes_any_k():
    assert set(STRATEGIES) >= {"full-src", "full-trg", "freeze+0", "freeze+1", "freeze+2", "adapter-src", "adapter-trg", "adapter-joint",
                               "bitfit-src", "bitfit-trg", "bitfit-joint", "sft"}
    assert get_strategy("freeze+4").extra_layers == 4
    with pytest.raises(ValueError, match="unknown transfer strategy 'freeze-1'"):
        get_strategy("freeze-1")


@pytest.mark.parametrize("strategy", ["bitfit-trg", "bitfit-src"])
def test_bitfit_changes_only_biases_and_the_head(students, examples, strategy):
    models, before = _train(students, strategy, examples)
    changed = _changed(before["trained"][0], models.trained[0])
    assert changed and all(n.endswith(".bias") or n.startswith("head.") for n in changed)
    assert any(n.startswith("encoder.") for n in changed), "no encoder bias trained"


@pytest.mark.parametrize("strategy", ["adapter-trg", "adapter-src", "adapter-joint"])
def test_adapters_leave_every_base_weight_bit_identical(students, examples, strategy):
    models, _ = _train(students, strategy, examples)
    paths = {"adapter-src": [students[0]], "adapter-trg": [students[1]], "adapter-joint": list(students)}[strategy]
    for model, path in zip(models.trained, paths, strict=True):
        fresh = _state(_fresh(path, strategy))
        changed = _changed(fresh, model)
        assert changed and all(".adapter." in n or n.startswith("head.") for n in changed)
        assert any(".adapter." in n for n in changed)


@pytest.mark.parametrize("strategy", ["adapter-src", "bitfit-src", "freeze+1"])
def test_src_strategy_moves_exactly_the_trained_parameters(students, examples, strategy):
    models, _ = _train(students, strategy, examples)
    src, trg = models.trained[0], models.evaluated
    moved = set(trainable_names(src))
    fresh_trg = _state(_fresh(students[1], strategy))
    src_now = _state(src)
    for name, param in trg.named_parameters():
        if name in moved:
            assert torch.equal(param, src_now[name]), name
        else:
            assert torch.equal(param, fresh_trg[name]), f"{name} changed on the target but was not trained"
    assert _changed(fresh_trg, trg) == {n for n in moved if not torch.equal(fresh_trg[n], src_now[n])}


@pytest.mark.parametrize("k", [0, 2])
def test_freeze_never_changes_the_frozen_source(students, examples, k):
    strategy = f"freeze+{k}"
    models, before = _train(students, strategy, examples)
    src = models.trained[0]
    changed = _changed(before["trained"][0], src)
    layers = {f"encoder.encoder.layer.{i}." for i in range(src.base_layers, src.base_layers + k)}
    assert changed and all(n.startswith("head.") or any(n.startswith(p) for p in layers) for n in changed)
    assert len(src.encoder.encoder.layer) == src.base_layers + k


def test_joint_trains_one_shared_set_on_the_averaged_loss(students, examples):
    for strategy, part in (("adapter-joint", ".adapter."), ("bitfit-joint", ".bias")):
        models = build_models(_config(students, strategy), get_strategy(strategy))
        src, trg = models.trained
        shared = [n for n in trainable_names(src) if part in n or n.startswith("head.")]
        assert shared and all(src.get_parameter(n) is trg.get_parameter(n) for n in shared)
        assert set(trainable_names(trg)) == set(trainable_names(src))
        batch = TASK.collate(TASK.encode(examples[:6], models.tokenizers["train"], 64), models.tokenizers["train"].pad_token_id)
        for m in (src, trg):
            m.eval()  # no dropout: the three losses below see the same function
        grads = []
        for models_in_loss in ([src], [trg], [src, trg]):
            for m in (src, trg):
                m.zero_grad(set_to_none=True)
            step_loss(models_in_loss, batch).backward()
            grads.append({n: src.get_parameter(n).grad.clone() for n in shared})
        for n in shared:
            torch.testing.assert_close(grads[2][n], (grads[0][n] + grads[1][n]) / 2, rtol=1e-5, atol=1e-7)
        assert any(not torch.allclose(grads[0][n], grads[1][n]) for n in shared), "source and target give the same gradients: not two students"


def test_sft_applies_the_sources_updates_to_the_target_and_freezes_embeddings(students, examples):
    models, before = _train(students, "sft", examples)
    src, trg = models.trained[0], models.evaluated
    src_before, trg_before = before["trained"][0], before["evaluated"]
    changed = _changed(src_before, src)
    assert changed and not any(n.startswith("encoder.embeddings.") for n in changed | _changed(trg_before, trg))
    for name, param in trg.named_parameters():
        if name.startswith("head."):
            assert param is src.get_parameter(name)
            continue
        delta_src = src.get_parameter(name).detach() - src_before[name]
        torch.testing.assert_close(param.detach() - trg_before[name], delta_src, rtol=0, atol=1e-6)
    assert not torch.equal(trg.get_parameter("encoder.encoder.layer.0.output.dense.weight"), src.get_parameter("encoder.encoder.layer.0.output.dense.weight"))


@pytest.mark.parametrize("strategy,trains,evaluates", [("full-src", "en", "en"), ("full-trg", "tr", "tr")])
def test_full_strategies_train_and_evaluate_one_student(students, examples, strategy, trains, evaluates):
    models, before = _train(students, strategy, examples)
    assert models.evaluated is models.trained[0]
    assert len(_changed(before["trained"][0], models.trained[0])) == len(list(models.trained[0].parameters()))
    assert models.trained[0].encoder.name_or_path.endswith(trains)


def test_adapter_is_pfeiffer_after_the_ffn_and_starts_near_identity():
    torch.manual_seed(0)
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaOutput
    from transformers import XLMRobertaConfig

    block = XLMRobertaOutput(XLMRobertaConfig(hidden_size=16, intermediate_size=32, hidden_dropout_prob=0.0)).eval()
    adapter = BottleneckAdapter(16, reduction_factor=4)
    wrapped = OutputWithAdapter(block, adapter)
    ffn, x = torch.randn(2, 5, 32), torch.randn(2, 5, 16)
    f = block.dense(ffn)
    h = block.LayerNorm(f + x)
    expected = block.LayerNorm(f + adapter.up(torch.relu(adapter.down(h))) + x)
    torch.testing.assert_close(wrapped(ffn, x), expected)
    torch.nn.init.zeros_(adapter.up.weight)
    torch.testing.assert_close(wrapped(ffn, x), block(ffn, x))  # up = 0: the layer's own function


def test_logit_mse_is_the_thesis_formula():
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    expected = sum(sum((teacher[i, j] - student[i, j]) ** 2 for j in range(3)) for i in range(4)) / 4
    torch.testing.assert_close(logit_mse(student, teacher, None), expected)
    labels = torch.tensor([[0, -100, 2], [-100, -100, 1]])
    tokens_s, tokens_t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    batch = type("B", (), {"labels": labels})()
    kept = [(0, 0), (0, 2), (1, 2)]
    expected = sum(((tokens_t[b, l] - tokens_s[b, l]) ** 2).sum() for b, l in kept) / len(kept)
    torch.testing.assert_close(logit_mse(tokens_s, tokens_t, batch), expected)


# ---- readings of the thesis where it is ambiguous ----------------------------------------------


def test_adapter_projections_start_with_the_adapters_library_bert_init():
    """`BnConfig(init_weights="bert")`: weights normal(0, 0.02), biases zero (the library's value, not the constant)."""
    torch.manual_seed(0)
    adapter = BottleneckAdapter(768)  # 48 × 768 values per projection: the sample std is within ±1.5 % of the true one
    for linear in (adapter.down, adapter.up):
        assert abs(linear.weight.std().item() - 0.02) < 0.0005
        assert abs(linear.weight.mean().item()) < 0.0005
        assert torch.count_nonzero(linear.bias) == 0


@pytest.mark.parametrize("task", ["xnli", "xcopa"])
def test_linear_head_is_one_layer_on_s(students, task):
    """`--head linear`: hidden·labels + labels parameters, logits = W·h_<s> + b (thesis §4.1); the default keeps transformers' dense+tanh."""
    torch.manual_seed(0)
    model = build_task_model(ModelSpec(task, str(students[0]), head="linear"), "cpu")[0].eval()
    hidden, labels = model.encoder.config.hidden_size, get_task(task).num_labels
    assert sum(p.numel() for p in model.head.parameters()) == hidden * labels + labels
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1], [0, 5, 9, 2, 1], [0, 6, 2, 1, 1]])
    batch = Batch(ids, (ids != 1).long(), torch.zeros(2 if task == "xcopa" else 4, dtype=torch.long), num_choices=2 if task == "xcopa" else None)
    with torch.no_grad():
        cls = model.encoder(input_ids=ids, attention_mask=batch.attention_mask).last_hidden_state[:, 0].double()
        expected = cls @ model.head.out.weight.double().T + model.head.out.bias.double()
        torch.testing.assert_close(model(batch).double(), expected.view(-1, 2) if task == "xcopa" else expected, rtol=1e-5, atol=1e-6)
    default = build_task_model(ModelSpec(task, str(students[0])), "cpu")[0]
    assert sum(p.numel() for p in default.head.parameters()) == hidden * hidden + hidden + hidden * labels + labels


def test_freeze0_with_the_linear_head_trains_only_that_layer_and_it_survives_saving(students, tmp_path):
    cfg = _config(students, "freeze+0")
    cfg.head = "linear"
    models = build_models(cfg, get_strategy("freeze+0"))
    hidden = models.trained[0].encoder.config.hidden_size
    assert trainable_names(models.trained[0]) == ["head.out.weight", "head.out.bias"]
    assert sum(p.numel() for p in models.trained[0].parameters() if p.requires_grad) == hidden * 3 + 3
    spec = ModelSpec("xnli", str(students[1]), head="linear")
    save_task_model(models.evaluated, spec, tmp_path)
    loaded, _, loaded_spec = load_task_model(tmp_path, "cpu")
    assert loaded_spec.head == "linear" and loaded.head.dense is None
    torch.testing.assert_close(loaded.head.out.weight, models.evaluated.head.out.weight)


@pytest.mark.parametrize("schedule, factors", [
    ("linear", [1.0, 1.0, 8 / 9, 7 / 9, 6 / 9, 5 / 9, 4 / 9, 3 / 9, 2 / 9, 1 / 9]),  # 10 steps, warm-up round(0.1·10) = 1 step
    ("constant", [1.0] * 10),
])
def test_learning_rate_schedules_step_by_step(schedule, factors):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = lr_schedule(optimizer, FitSettings(epochs=1, batch_size=1, lr=0.5, warmup=0.1, schedule=schedule), total=10)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5 * f for f in factors])


@pytest.mark.parametrize("size, ks", [(700, [10, 100, 500]), (100, [10, 50, 100])])  # XCOPA: k = 100 of its 100 val examples
def test_few_shot_samples_are_nested_and_seeded(size, ks):
    """For every seed (a separate `random.sample` per k breaks nesting for some seeds, e.g. 2, 14 or 25)."""
    pool = [f"example {i}" for i in range(size)]
    for seed in range(50):
        drawn = nested_shots(pool, ks, seed=seed)
        assert [len(drawn[k]) for k in ks] == ks
        assert len(set(drawn[ks[-1]])) == ks[-1] and all(0 <= i < size for i in drawn[ks[-1]])
        assert set(drawn[ks[0]]) <= set(drawn[ks[1]]) <= set(drawn[ks[2]])
        assert drawn == nested_shots(pool, ks[::-1], seed=seed)  # the same samples whatever the order of the k's
    assert set(nested_shots(pool, [10], seed=7)[10]) != set(nested_shots(pool, [10], seed=8)[10])


@pytest.mark.parametrize("strategy", ["full-trg", "bitfit-src"])
def test_literal_task_distillation_is_half_logit_mse_half_the_students_mlm_loss(students, examples, strategy):
    """`--task-teacher-loss mlm` (§3.3.6 read literally): ½·(1/N)Σ‖z_T − z_S‖² + ½·MLM, the MLM loss being what the
    student directory's own masked LM (loaded afresh by transformers) computes on the same masked batch; no task loss."""
    from transformers import AutoModelForMaskedLM

    from mdist.data.masking import MaskingSpec, mask_tokens
    from mdist.transfer.mlm import MaskedLMLoss

    models = build_models(_config(students, strategy), get_strategy(strategy))
    student = models.trained[0].eval()
    teacher = _fresh(students[0], "full-src").eval()
    tokenizer = models.tokenizers["train"]
    batch = TASK.collate(TASK.encode(examples[:8], tokenizer, 64), tokenizer.pad_token_id)
    mlm = MaskedLMLoss(student, tokenizer, seed=5)
    loss = step_loss([student], batch, teacher, [mlm])

    reference = AutoModelForMaskedLM.from_pretrained(student.encoder.name_or_path).eval()
    masked, labels = mask_tokens(batch.input_ids, MaskingSpec.from_tokenizer(tokenizer, reference.config.vocab_size), torch.Generator().manual_seed(5))
    assert (labels != -100).sum() > 5
    with torch.no_grad():
        z_s, z_t = student(batch).double(), teacher(batch).double()
        mse = sum(((z_t[i] - z_s[i]) ** 2).sum() for i in range(len(z_s))) / len(z_s)
        mlm_reference = reference(input_ids=masked, attention_mask=batch.attention_mask, labels=labels).loss.double()
    torch.testing.assert_close(loss.double(), 0.5 * mse + 0.5 * mlm_reference, rtol=1e-5, atol=1e-6)

    loss.backward()  # the MLM term reaches what the strategy trains; the MLM head itself stays as pre-trained
    assert mlm.head.decoder.weight is student.encoder.embeddings.word_embeddings.weight
    assert not any(p.requires_grad for name, p in mlm.head.named_parameters() if name != "decoder.weight")
    encoder_trained = [p for name, p in student.named_parameters() if p.requires_grad and name.startswith("encoder.")]
    assert encoder_trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder_trained)
