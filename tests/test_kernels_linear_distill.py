"""Fused linear KL + CE vs the float64 reference: values, components and gradients across chunkings.

Legend: N rows, V vocabulary, D_s/D_t hidden widths, T temperature.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before mdist.kernels binds its Triton kernels

import pytest
import torch

from mdist.kernels import fused_linear_distill_loss, fused_linear_distill_loss_reference

# whole vocabulary per chunk; several row chunks; vocabulary chunks (V not a multiple) with several kernel
# steps and several statistics programs per row and chunk (the last one partial); whole-vocabulary
# chunks whose rows' statistics are split over several programs
CHUNKINGS = [dict(), dict(row_chunk=5), dict(row_chunk=4, vocab_chunk=70, block_v=32, split_v=32), dict(block_v=32, split_v=64)]
IDS = ["one_chunk", "row_chunks", "vocab_chunks", "split_rows"]


def _inputs(N, V, D_s, D_t, bias=True, ignored=(2, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    h_s, w_s, b_s = rand(N, D_s), rand(V, D_s, scale=0.3), rand(V, scale=0.1) if bias else None
    h_t, w_t, b_t = rand(N, D_t), rand(V, D_t, scale=0.3), rand(V, scale=0.1) if bias else None
    labels = torch.randint(0, V, (N,), generator=gen)
    labels[[i for i in ignored if i < N]] = -100
    return [h_s, w_s, b_s], [h_t, w_t, b_t], labels


def _run(fn, student, teacher, labels, T, **kw):
    """(loss, ce, kl) and student grads of fn on leaf copies; float32 for the fused op, float64 for the reference."""
    dtype = torch.float64 if fn is fused_linear_distill_loss_reference else torch.float32
    leaves = [None if x is None else x.to(dtype).requires_grad_() for x in student]
    teach = [None if x is None else x.to(dtype) for x in teacher]
    out = fn(*leaves, *teach, labels, T, 0.7, 1.3, True, **kw)
    out[0].backward()
    return [o.detach().double() for o in out], [None if x is None else x.grad.double() for x in leaves]


def _assert_matches(student, teacher, labels, T, **kw):
    got, got_grads = _run(fused_linear_distill_loss, student, teacher, labels, T, **kw)
    want, want_grads = _run(fused_linear_distill_loss_reference, student, teacher, labels, T)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        if w is None:
            assert g is None
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * w.abs().max().item())


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=IDS)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_matches_reference(chunking, T):
    student, teacher, labels = _inputs(13, 300, 24, 40)
    _assert_matches(student, teacher, labels, T, **chunking)


@pytest.mark.parametrize("chunking", [dict(), dict(row_chunk=20)], ids=["one_chunk", "row_chunks"])
def test_bias_gradient_sums_over_several_row_programs(chunking):
    """More rows in a chunk than one gradient program takes (GRAD_ROWS): 37 rows are programs of
    16, 16 and 5 rows (row chunks of 20 and 17: 16 + 4 and 16 + 1), whose column sums make d b."""
    from mdist.kernels import linear_distill

    assert linear_distill.GRAD_ROWS == 16
    student, teacher, labels = _inputs(37, 300, 24, 40, ignored=(2, 5, 17, 36))
    _assert_matches(student, teacher, labels, 2.0, **chunking)


@pytest.mark.parametrize("chunking", CHUNKINGS[::2], ids=["one_chunk", "vocab_chunks"])
def test_without_bias(chunking):
    student, teacher, labels = _inputs(9, 130, 16, 16, bias=False)
    _assert_matches(student, teacher, labels, 2.0, **chunking)


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=IDS)
def test_near_equal_student_small_kl(chunking):
    """KL near zero (student ≈ teacher, KL ≈ 2e-5) still matches: the online statistics do not cancel
    away the signal. The KL term is held to a relative tolerance of its own (an absolute one of 1e-6
    would let 5 % through), tighter than float32 PyTorch's own error here (about 3e-3: log-softmax
    differences of O(log V) numbers)."""
    student, teacher, labels = _inputs(11, 257, 32, 32)
    gen = torch.Generator().manual_seed(1)
    teacher = [s + 1e-3 * torch.randn(s.shape, generator=gen, dtype=s.dtype) for s in student]
    (_, _, kl), _ = _run(fused_linear_distill_loss, [x.clone() for x in student], teacher, labels, 1.5, **chunking)
    (_, _, want), _ = _run(fused_linear_distill_loss_reference, [x.clone() for x in student], teacher, labels, 1.5)
    _assert_matches(student, teacher, labels, 1.5, **chunking)
    assert 1e-6 < want.item() < 1e-4
    assert abs(kl.item() - want.item()) < 1e-4 * want.item(), f"KL {kl.item():.8g} vs float64 {want.item():.8g}"


@pytest.mark.parametrize("chunking", CHUNKINGS[::2], ids=["one_chunk", "vocab_chunks"])
def test_all_ignored_gives_zero_loss_and_grads(chunking):
    student, teacher, labels = _inputs(6, 100, 16, 24, ignored=range(6))
    (loss, ce, kl), grads = _run(fused_linear_distill_loss, student, teacher, labels, 2.0, **chunking)
    assert loss.item() == ce.item() == kl.item() == 0.0
    assert all(not g.any() for g in grads)


def test_incoming_gradient_scales_and_only_needed_grads():
    (h_s, w_s, b_s), teacher, labels = _inputs(7, 90, 16, 16)
    h_leaf = h_s.float().requires_grad_()
    teacher32 = [x.float() for x in teacher]
    loss = fused_linear_distill_loss(h_leaf, w_s.float(), b_s.float(), *teacher32, labels, 2.0, 0.5, 1.0)
    (-2.0 * loss).backward()
    h64 = h_s.clone().requires_grad_()
    (-2.0 * fused_linear_distill_loss_reference(h64, w_s, b_s, *teacher, labels, 2.0, 0.5, 1.0)).backward()
    torch.testing.assert_close(h_leaf.grad.double(), h64.grad, rtol=1e-4, atol=1e-7)


def test_plain_return_is_the_loss():
    student, teacher, labels = _inputs(5, 64, 16, 16)
    args = [x.float() for x in student + teacher]
    loss, ce, kl = fused_linear_distill_loss(*args, labels, 1.0, 1.0, 0.5, return_components=True)
    torch.testing.assert_close(fused_linear_distill_loss(*args, labels, 1.0, 1.0, 0.5), loss)
    torch.testing.assert_close(loss, ce + 0.5 * kl)


@pytest.mark.parametrize("chunking", CHUNKINGS[::2], ids=["one_chunk", "vocab_chunks"])
def test_bfloat16_inputs_give_bfloat16_grads(chunking):
    """bf16 logits chunks and bf16 d logits, as on the GPU; compared with float64 on the same rounded inputs.
    Under the interpreter the kernels compute in fp32 (bf16 is upcast), so this checks dtypes and host
    code, not bf16 arithmetic; test_kernels_bf16_cuda.py runs the bf16 path where CUDA is present."""
    student, teacher, labels = _inputs(9, 300, 32, 32)
    student, teacher = ([x.bfloat16() for x in xs] for xs in (student, teacher))
    leaves = [x.clone().requires_grad_() for x in student]
    loss = fused_linear_distill_loss(*leaves, *teacher, labels, 2.0, 0.7, 1.3, **chunking)  # weights as in _run
    loss.backward()
    rounded = ([x.double() for x in xs] for xs in (student, teacher))
    want, want_grads = _run(fused_linear_distill_loss_reference, *rounded, labels, 2.0)
    assert abs(loss.item() - want[0].item()) < 2e-2 * want[0].item()
    for leaf, w in zip(leaves, want_grads):
        assert leaf.grad.dtype == torch.bfloat16
        assert (leaf.grad.double() - w).norm() / w.norm() < 2e-2


def test_mismatched_shapes_are_refused():
    student, teacher, labels = _inputs(6, 50, 8, 12)
    with pytest.raises(ValueError, match=r"labels \(5,\) \(want \(6,\)\)"):
        fused_linear_distill_loss(*student, *teacher, labels[:5], 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"w_s \(49, 8\)"):
        fused_linear_distill_loss(student[0], student[1][:49], student[2], *teacher, labels, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("chunking", CHUNKINGS, ids=IDS)
def test_padded_logits_columns_never_enter_loss_or_gradients(monkeypatch, chunking):
    """Logits buffers are allocated with padded rows and filled with NaN here: a single padding
    element read by a kernel or a GEMM would turn the loss or a gradient into NaN."""
    from mdist.kernels import linear_distill

    shapes = []

    def poisoned(rows, columns, dtype, device):
        buf = torch.full((rows, linear_distill.padded_stride(columns)), float("nan"), dtype=dtype, device=device)
        shapes.append((columns, buf.shape[1]))
        return buf

    monkeypatch.setattr(linear_distill, "logits_buffer", poisoned)
    student, teacher, labels = _inputs(13, 300, 24, 40)
    _assert_matches(student, teacher, labels, 2.0, **chunking)
    assert shapes and all(stride % linear_distill.ROW_ALIGN == 0 and stride > columns for columns, stride in shapes)
