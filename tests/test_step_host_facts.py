"""A step's shape facts come from the host: `TokenBatch` carries the masked positions and padding it
was built with, so the encoders and the loss never read a count back from the device (each read is a
device sync that drains the GPU's queue). On the CPU a sync cannot be observed directly; the ops that
would make one on a GPU (data-dependent shapes and scalar reads) are recorded instead.

Legend: B batch, L sequence, N masked tokens.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mdist.config import StudentsConfig
from mdist.data.batch import TokenBatch
from mdist.encode import encode
from mdist.fused_encoder import enable_fused_encoder
from mdist.losses import DistillLoss
from mdist.students import StudentGroup
from mdist.teacher import load_teacher
from mdist.train import micro_batches, teacher_outputs

_SYNCING = {  # ops whose result size or value a GPU would have to read back before the host can go on
    torch.ops.aten.nonzero.default, torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
    torch.ops.aten.masked_select.default, torch.ops.aten.equal.default,
}


class _DeviceReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is torch.ops.aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in _SYNCING or boolean_index:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _batch(vocab, lang="en", padded=True, seed=0, B=4, L=12):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab - 1, (B, L), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 9:] = 0
        mask[3, 5:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 2:4] = ids[:, 2:4]
    labels[0, 7] = ids[0, 7]
    return TokenBatch(lang, ids, mask, labels)


def test_host_facts_match_the_tensors_and_survive_slicing():
    batch = _batch(100)
    labels_flat = batch.labels_BL.reshape(-1)
    torch.testing.assert_close(batch.masked_N, (labels_flat != -100).nonzero().squeeze(1))
    assert batch.masked_per_row == (3, 2, 2, 2) and batch.real_per_row == (12, 9, 12, 5)
    assert batch.tokens == int(batch.attention_mask_BL.sum()) == 38 and batch.padded
    assert not _batch(100, padded=False).padded
    moved = batch.to("cpu")
    assert (moved.masked_per_row, moved.real_per_row) == (batch.masked_per_row, batch.real_per_row)
    for half, rows in zip(micro_batches(batch, 2), ((0, 2), (2, 4))):
        rebuilt = TokenBatch("en", *(x[rows[0] : rows[1]] for x in (batch.input_ids_BL, batch.attention_mask_BL, batch.labels_BL)))
        torch.testing.assert_close(half.masked_N, rebuilt.masked_N)
        assert (half.masked_per_row, half.real_per_row, half.tokens, half.padded) == (
            rebuilt.masked_per_row, rebuilt.real_per_row, rebuilt.tokens, rebuilt.padded
        )


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("encoder", ["hf", "fused"])
@pytest.mark.parametrize("padded", [True, False])
def test_pair_step_reads_nothing_back(tiny_teacher_dir, kernels, encoder, padded):
    """Teacher outputs, student forward, MonoShot loss (every term) and backward of one (student,
    language) pair: no device read. Without the host facts the same pass reads (the check can fail)."""
    teacher = load_teacher(tiny_teacher_dir)[0]
    group = StudentGroup(teacher, StudentsConfig(groups={"en": ["en"]}, layers=2), teacher.config.hidden_size)
    if encoder == "fused":
        enable_fused_encoder(teacher)
        enable_fused_encoder(group.students["en"])
    loss_fn = DistillLoss.build("monoshot", None, None, 2.0, 2, teacher.config.num_hidden_layers, kernels)
    batch = _batch(teacher.config.vocab_size, padded=padded)
    with _DeviceReads() as reads:
        target = teacher_outputs(teacher, {"en": batch})["en"]
        out = group("en", batch.input_ids_BL, batch.attention_mask_BL, batch.labels_BL, masked_N=batch.masked_N, padded=batch.padded)
        loss, _ = loss_fn(out, target, batch.attention_mask_BL, batch.labels_BL, masked_N=batch.masked_N)
        loss.backward()
    assert reads.ops == []
    with _DeviceReads() as reads:
        encode(teacher, batch.input_ids_BL, batch.attention_mask_BL, batch.labels_BL)
    assert reads.ops


class _Engine:
    """The calls `distill_step` makes on DeepSpeed's engine, on one process: forward, backward, step
    (clipping and the optimiser as DeepSpeed's bf16 engine does them)."""

    def __init__(self, module, optimizer):
        self.module, self.optimizer = module, optimizer

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss):
        loss.backward()

    def step(self):
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("update, accumulation", [("sequential", 2), ("joint", 1)])
def test_distill_step_reads_nothing_back_but_its_terms(tiny_teacher_dir, update, accumulation):
    """Algorithm 1's whole step, two students, micro-batches sliced on the host, torch's fused AdamW:
    the only read is `.tolist()` of the stacked terms at the end, which is not an op on the CPU."""
    from mdist.optim import build_optimizer, student_param_groups
    from mdist.train import distill_step

    teacher = load_teacher(tiny_teacher_dir)[0]
    group = StudentGroup(teacher, StudentsConfig(groups={"en": ["en"], "tr": ["tr"]}, layers=2), teacher.config.hidden_size)
    optimizer = build_optimizer("adamw_fused", student_param_groups(group.students, group.projections, 0.01), 1e-3)
    loss_fn = DistillLoss.build("monoshot", None, None, 2.0, 2, teacher.config.num_hidden_layers, "triton")
    batches = {lang: _batch(teacher.config.vocab_size, lang, seed=i) for i, lang in enumerate(("en", "tr"))}
    with _DeviceReads() as reads:
        result = distill_step(_Engine(group, optimizer), optimizer, teacher, loss_fn, batches, update, step=0, accumulation=accumulation)
    assert reads.ops == []
    assert result.tokens == 2 * 38 and set(result.terms) == {"en/en", "tr/tr"}


def test_unpadded_batches_reach_attention_without_a_mask(tiny_teacher_dir, monkeypatch):
    """The Hugging Face path: no mask for an unpadded batch (SDPA may pick flash), the padding mask otherwise."""
    from mdist import capture

    given = []
    original = capture.sdpa_attention_forward

    def recording(module, query, key, value, attention_mask, **kwargs):
        given.append(attention_mask is not None)
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(capture, "sdpa_attention_forward", recording)
    teacher = load_teacher(tiny_teacher_dir)[0]
    layers = teacher.config.num_hidden_layers
    for padded in (False, True):
        teacher_outputs(teacher, {"en": _batch(teacher.config.vocab_size, padded=padded)})
    assert given == [False] * layers + [True] * layers


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_unpadded_batches_give_the_loss_no_mask_and_the_same_value(tiny_teacher_dir, monkeypatch, kernels):
    """With the host fact "not padded" the hidden, embedding and attention MSE get no mask (no mask
    counts, no mask loads in the kernels); the loss equals the one computed with the all-ones mask."""
    import mdist.losses as losses

    masks = []

    def recording(op):
        def call(pairs, *mask, **kwargs):  # the mask comes positionally (hidden) or as key_padding_mask (attention)
            masks.append((op.__name__, (mask or [kwargs.get("key_padding_mask")])[0] is not None))
            return op(pairs, *mask, **kwargs)
        return call

    for name in ("attention_score_mse_multi", "hidden_mse_multi"):
        monkeypatch.setattr(losses.loss_ops, name, recording(getattr(losses.loss_ops, name)))
    teacher = load_teacher(tiny_teacher_dir)[0]
    group = StudentGroup(teacher, StudentsConfig(groups={"en": ["en"]}, layers=2), teacher.config.hidden_size)
    loss_fn = DistillLoss.build("monoshot", None, None, 2.0, 2, teacher.config.num_hidden_layers, kernels)
    batch = _batch(teacher.config.vocab_size, padded=False)
    target = teacher_outputs(teacher, {"en": batch})["en"]
    out = group("en", batch.input_ids_BL, batch.attention_mask_BL, batch.labels_BL, masked_N=batch.masked_N, padded=batch.padded)
    values = {}
    for padded in (False, None):
        loss, terms = loss_fn(out, target, batch.attention_mask_BL, batch.labels_BL, masked_N=batch.masked_N, padded=padded)
        values[padded] = [loss, *(terms[name] for name in ("hid", "att", "emb"))]
    for got, want in zip(values[False], values[None]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    if kernels == "triton":  # hid and emb, then att, without a mask; then the same with it
        calls = [("hidden_mse_multi", False), ("attention_score_mse_multi", False), ("hidden_mse_multi", False)]
        assert masks == calls + [(name, True) for name, _ in calls]
