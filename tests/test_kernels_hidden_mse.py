"""Fused masked hidden-state MSE vs a float64 per-token loop: values and gradients, odd widths,
padding, all-padded batches, mixed dtypes, incoming gradients; several layer pairs in one call.

Legend: B batch, L sequence, D hidden.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before mdist.kernels binds its Triton kernels

import pytest
import torch

from mdist.kernels import hidden_mse, hidden_mse_multi, hidden_mse_reference


def _inputs(B, L, D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, D, generator=gen, dtype=torch.float64), torch.randn(B, L, D, generator=gen, dtype=torch.float64)


def _per_token_loop(h_s, h_t, valid):
    """Independent form: the mean over valid tokens of each token's mean squared difference."""
    per_token = [((h_s[b, i] - h_t[b, i]) ** 2).mean() for b in range(h_s.shape[0]) for i in range(h_s.shape[1]) if valid is None or valid[b, i]]
    return torch.stack(per_token).mean() if per_token else h_s.new_zeros(())


def _masks(kind, B, L):
    valid = torch.ones(B, L, dtype=torch.bool)
    if kind == "ragged":
        valid[0, L - 2 :] = False
        valid[-1, 1] = False
    return None if kind == "none" else valid


@pytest.mark.parametrize("B, L, D", [(2, 9, 16), (3, 7, 50), (1, 5, 1030)], ids=["pow2", "odd", "wider_than_a_tile"])
@pytest.mark.parametrize("mask_kind", ["none", "ragged"])
def test_matches_float64_loop(B, L, D, mask_kind):
    h_s64, h_t64 = _inputs(B, L, D)
    valid = _masks(mask_kind, B, L)
    leaf64 = h_s64.clone().requires_grad_()
    want = _per_token_loop(leaf64, h_t64, valid)
    want.backward()
    leaf = h_s64.float().requires_grad_()
    got = hidden_mse(leaf, h_t64.float(), valid)
    got.backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(leaf.grad.double(), leaf64.grad, rtol=1e-4, atol=1e-8)
    if valid is not None:
        assert leaf.grad[~valid].abs().max() == 0  # padding gets no gradient
    torch.testing.assert_close(hidden_mse_reference(h_s64, h_t64, valid), want.detach())


def test_all_padded_gives_zero_loss_and_grad():
    h_s, h_t = (x.float() for x in _inputs(2, 6, 24))
    h_s.requires_grad_()
    loss = hidden_mse(h_s, h_t, torch.zeros(2, 6, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and h_s.grad.abs().max() == 0


def test_bf16_student_fp32_teacher_and_incoming_gradient():
    """Under the interpreter the kernel computes in fp32 (bf16 upcast): dtypes and host code only here;
    test_kernels_bf16_cuda.py runs the bf16 path where CUDA is present."""
    h_s64, h_t64 = _inputs(2, 8, 40, seed=3)
    valid = _masks("ragged", 2, 8)
    leaf = h_s64.bfloat16().requires_grad_()
    (3.0 * hidden_mse(leaf, h_t64.float(), valid)).backward()
    assert leaf.grad.dtype == torch.bfloat16
    ref = h_s64.bfloat16().double().requires_grad_()  # same rounded inputs, exact math
    (3.0 * _per_token_loop(ref, h_t64.float().double(), valid)).backward()
    torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=1e-2, atol=1e-4)


def test_multi_sums_pairs_read_in_place():
    """Four pairs as a strategy hands them over: contiguous layer outputs, a strided view (a slice of a
    wider buffer), one tensor in two pairs (its gradients add up), and a pair of another dtype (its own
    launch); against the float64 loop, values and gradients."""
    B, L, D = 2, 7, 24
    valid = _masks("ragged", B, L)
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(B, L, 2 * D, generator=gen, dtype=torch.float64)
    students64 = [torch.randn(B, L, D, generator=gen, dtype=torch.float64), wide[..., :D], None, torch.randn(B, L, D, generator=gen, dtype=torch.float64)]
    teachers64 = [torch.randn(B, L, D, generator=gen, dtype=torch.float64) for _ in range(4)]
    leaves = [students64[0].float().requires_grad_(), wide.float().requires_grad_(), None, students64[3].bfloat16().requires_grad_()]
    students = [leaves[0], leaves[1][..., :D], leaves[0], leaves[3]]
    assert not students[1].is_contiguous()
    got = hidden_mse_multi([(h_s, h_t.float()) for h_s, h_t in zip(students, teachers64)], valid)
    got.backward()
    refs = [students64[0].clone().requires_grad_(), wide.clone().requires_grad_(), None, students64[3].bfloat16().double().requires_grad_()]
    ref_students = [refs[0], refs[1][..., :D], refs[0], refs[3]]
    want = sum(_per_token_loop(h_s, h_t.float().double(), valid) for h_s, h_t in zip(ref_students, teachers64))
    want.backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-3, atol=1e-6)  # the bf16 pair: bf16 gradient
    for leaf, ref, tol in zip(leaves, refs, (1e-4, 1e-4, None, 1e-2)):
        if leaf is not None:
            torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=tol, atol=1e-4 * tol)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="project the student first"):
        hidden_mse(torch.zeros(1, 2, 8), torch.zeros(1, 2, 16))
    with pytest.raises(ValueError, match="does not match the tokens"):
        hidden_mse(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="project the student first"):  # any pair of several
        hidden_mse_multi([(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)), (torch.zeros(1, 2, 8), torch.zeros(1, 2, 4))])
