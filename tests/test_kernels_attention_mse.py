"""Fused attention-score MSE vs the float64 reference: values and gradients, odd shapes, padding, fused pairs.

Legend: B batch, H heads, L sequence, D_s/D_t student/teacher head width.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before mdist.kernels binds its Triton kernels

import pytest
import torch

from mdist.kernels import (
    attention_score_mse,
    attention_score_mse_gram,
    attention_score_mse_multi,
    attention_score_mse_reference,
)

BLOCKS = dict(block_rows=16, block_cols=16)  # several tiles per sequence even at interpreter-sized L


def _qk(B, H, L, D_s, D_t, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, d, generator=gen, dtype=torch.float64) for d in (D_s, D_s, D_t, D_t)]


def _mask(kind, B, L):
    mask_BL = torch.ones(B, L, dtype=torch.bool)
    if kind == "ragged":
        mask_BL[0, L - 7 :] = False
    elif kind == "holes":
        mask_BL[:, 3] = False
        mask_BL[-1, L // 2 :] = False
    elif kind == "padded_sequence":
        mask_BL[0] = False
        mask_BL[-1, 5:] = False
    elif kind == "all_padded":
        mask_BL[:] = False
    return None if kind == "none" else mask_BL


def _grads_fused(fn, q_s, k_s, q_t, k_t, *args, **kw):
    """Loss and grads of fn on float32 leaf copies (teacher as plain float32)."""
    s = [x.float().requires_grad_() for x in (q_s, k_s)]
    loss = fn(*s, q_t.float(), k_t.float(), *args, **kw)
    loss.backward()
    return loss.detach().double(), [x.grad.double() for x in s]


def _grads_reference(q_s, k_s, q_t, k_t, mask):
    s = [x.clone().requires_grad_() for x in (q_s, k_s)]
    loss = attention_score_mse_reference(*s, q_t, k_t, mask)
    loss.backward()
    return loss.detach(), [x.grad for x in s]


def _assert_close(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-7)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6 * max(w.abs().max().item(), 1e-3))


@pytest.mark.parametrize(
    "B,H,L,D_s,D_t",
    [(2, 3, 37, 24, 40), (1, 2, 16, 16, 16), (3, 1, 50, 64, 32), (2, 2, 5, 8, 12)],
)
@pytest.mark.parametrize("mask_kind", ["none", "ragged", "holes", "padded_sequence"])
def test_matches_reference(B, H, L, D_s, D_t, mask_kind):
    q_s, k_s, q_t, k_t = _qk(B, H, L, D_s, D_t)
    mask = _mask(mask_kind, B, L)
    got = _grads_fused(attention_score_mse, q_s, k_s, q_t, k_t, mask, **BLOCKS)
    _assert_close(got, _grads_reference(q_s, k_s, q_t, k_t, mask))


def test_all_padded_gives_zero_loss_and_grads():
    q_s, k_s, q_t, k_t = _qk(2, 2, 20, 16, 16)
    loss, (dq, dk) = _grads_fused(attention_score_mse, q_s, k_s, q_t, k_t, _mask("all_padded", 2, 20), **BLOCKS)
    assert loss.item() == 0.0 and not dq.any() and not dk.any()


def test_strided_inputs_and_default_tiles():
    """Q/K as they come out of a (B, L, H, D) projection, transposed without a copy."""
    q_s, k_s, q_t, k_t = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in _qk(2, 3, 70, 32, 48))
    assert not q_s.is_contiguous()
    mask = _mask("ragged", 2, 70)
    got = _grads_fused(attention_score_mse, q_s, k_s, q_t, k_t, mask)
    _assert_close(got, _grads_reference(q_s, k_s, q_t, k_t, mask))


def test_incoming_gradient_scales_and_only_needed_grads():
    q_s, k_s, q_t, k_t = (x.float() for x in _qk(1, 2, 24, 16, 16))
    q_leaf = q_s.clone().requires_grad_()
    (3.0 * attention_score_mse(q_leaf, k_s, q_t, k_t, **BLOCKS)).backward()
    q64 = q_s.double().requires_grad_()
    (3.0 * attention_score_mse_reference(q64, k_s.double(), q_t.double(), k_t.double())).backward()
    torch.testing.assert_close(q_leaf.grad.double(), q64.grad, rtol=1e-4, atol=1e-7)


def test_multi_sums_pair_means_and_grads():
    """Two pairs of one shape (stacked, one pair of launches) and one with a wider teacher head."""
    B, H, L = 2, 2, 29
    mask = _mask("holes", B, L)
    pairs64 = [_qk(B, H, L, 16, 16, seed=1), _qk(B, H, L, 16, 16, seed=2), _qk(B, H, L, 16, 24, seed=3)]
    leaves = [[x.float().requires_grad_() for x in p[:2]] for p in pairs64]
    got = attention_score_mse_multi([(*s, p[2].float(), p[3].float()) for s, p in zip(leaves, pairs64)], mask, **BLOCKS)
    got.backward()
    want_leaves = [[x.clone().requires_grad_() for x in p[:2]] for p in pairs64]
    want = sum(attention_score_mse_reference(*s, p[2], p[3], mask) for s, p in zip(want_leaves, pairs64))
    want.backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-7)
    for s, w in zip(leaves, want_leaves):
        for g, r in zip(s, w):
            torch.testing.assert_close(g.grad.double(), r.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("layout", ["fused_qkv", "stacked", "mixed_strides"])
def test_multi_reads_strided_pairs_in_place(layout):
    """Q/K as the encoders hand them over: views of one (B, L, 3, H, D) Q/K/V product per layer (the fused
    layer), slices of one stacked buffer, or pairs of two stride patterns (two groups of launches)."""
    B, H, L, D, P = 2, 2, 21, 16, 3
    gen = torch.Generator().manual_seed(9)
    mask = _mask("ragged", B, L)
    if layout == "fused_qkv":
        qkv = [torch.randn(B, L, 3, H, D, generator=gen).permute(2, 0, 3, 1, 4) for _ in range(2 * P)]
        tensors = [x for t in qkv for x in t.unbind(0)[:2]]  # q, k of each layer (strided views)
    elif layout == "stacked":
        tensors = list(torch.randn(4 * P, B, H, L, D, generator=gen).unbind(0))
    else:
        tensors = [torch.randn(B, H, L, D, generator=gen) if i % 4 else torch.randn(B, L, H, D, generator=gen).transpose(1, 2) for i in range(4 * P)]
    student = [x.detach().clone().requires_grad_() if i % 4 < 2 else x for i, x in enumerate(tensors)]
    pairs = [tuple(student[4 * p : 4 * p + 4]) for p in range(P)]
    leaves = [x for pair in pairs for x in pair[:2]]
    if layout != "stacked":  # non-contiguous views reach the kernel as they are
        assert not all(x.is_contiguous() for x in leaves)
    got = attention_score_mse_multi(pairs, mask, **BLOCKS)
    got.backward()
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    want = sum(
        attention_score_mse_reference(ref_leaves[2 * p], ref_leaves[2 * p + 1], pairs[p][2].double(), pairs[p][3].double(), mask) for p in range(P)
    )
    want.backward()
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-7)
    for leaf, ref in zip(leaves, ref_leaves):
        torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=1e-4, atol=1e-7)


def test_near_equal_scores_tiles_stay_accurate_gram_cancels():
    """Late in training student ≈ teacher: the tiled kernel keeps float32 accuracy, the Gram identity loses it."""
    q_t, k_t = (x.float() for x in _qk(2, 2, 64, 32, 32)[2:])
    gen = torch.Generator().manual_seed(7)
    q_s, k_s = (x + 1e-3 * torch.randn(x.shape, generator=gen) for x in (q_t, k_t))
    mask = _mask("ragged", 2, 64)
    want = attention_score_mse_reference(q_s.double(), k_s.double(), q_t.double(), k_t.double(), mask).item()
    tiled_err = abs(attention_score_mse(q_s, k_s, q_t, k_t, mask).item() - want) / want
    gram_err = abs(attention_score_mse_gram(q_s, k_s, q_t, k_t, mask).item() - want) / want
    gram64 = attention_score_mse_gram(q_s.double(), k_s.double(), q_t.double(), k_t.double(), mask).item()
    assert tiled_err < 1e-4
    assert abs(gram64 - want) / want < 1e-6  # the identity itself is exact
    assert gram_err > 100 * tiled_err  # measured ~6e-3 vs ~3e-6 in float32


def test_bfloat16_inputs_give_bfloat16_grads():
    """bf16 as in training (under the interpreter the kernel sees fp32: triton-lang/triton#11584), so the
    bf16 arithmetic never runs in CI: test_kernels_bf16_cuda.py checks it where CUDA is present."""
    q_s, k_s, q_t, k_t = (x.bfloat16() for x in _qk(2, 2, 40, 32, 32))
    mask = _mask("ragged", 2, 40)
    leaves = [x.clone().requires_grad_() for x in (q_s, k_s)]
    attention_score_mse(*leaves, q_t, k_t, mask, **BLOCKS).backward()
    want = _grads_reference(*(x.double() for x in (q_s, k_s, q_t, k_t)), mask)[1]
    for leaf, w in zip(leaves, want):
        assert leaf.grad.dtype == torch.bfloat16
        assert (leaf.grad.double() - w).norm() / w.norm() < 1e-2


def test_mismatched_shapes_are_refused():
    q_s, k_s, q_t, k_t = _qk(2, 2, 16, 8, 8)
    with pytest.raises(ValueError, match="must be"):
        attention_score_mse(q_s, k_s[:, :, :10], q_t, k_t)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, L\) = \(2, 16\)"):
        attention_score_mse(q_s, k_s, q_t, k_t, torch.ones(2, 15, dtype=torch.bool))
