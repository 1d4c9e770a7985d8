"""Attention-score MSE between student and teacher, tiled on chip: no L×L matrix ever reaches memory.

    loss = mean over (b, h, valid query i, valid key j) of (q_s[i]·k_s[j]/√D_s − q_t[i]·k_t[j]/√D_t)²

Why gradients are made in the forward pass: the loss is a scalar, so d loss/d q_s is known up to the
incoming gradient's factor; producing it while the score tiles are on chip avoids recomputing every
tile in backward (backward is then one multiply).

Why one kernel serves both gradients: the kernel walks a block of *rows* against all *columns* and
sums E[row, col]·col_s. With rows = queries it yields dq_s (and the loss); with q and k swapped it
yields dk_s, because E(k, q) = E(q, k)ᵀ and the valid-pair mask is symmetric.

Why the Gram identity is only a measured alternative (`attention_score_mse_gram`): Σ E² expanded as
⟨QᵀQ, KᵀK⟩ terms subtracts numbers of size ‖scores‖² to get one of size ‖E‖²; once the student is
close to the teacher that cancellation eats float32's digits (tests/test_kernels_attention_mse.py).

Legend: P layer pairs, B batch, G = P·B stacked batch, H heads, L sequence, D_s/D_t student/teacher
head width, R/C row/column tile, E = student − teacher score difference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import check_device, interpreted

# GPU tile defaults (D ≤ 128); small sequences shrink them to the next power of two (≥ 16, tl.dot's minimum).
# 64 × 128 from `benchmarks/kernels.py --sweep` on an H100 at commit 7bfc63b (issue #12): 0.72 ms for
# MonoShot's 7 pairs at batch 64 × 512 against 1.00 ms for the earlier 128 × 64.
BLOCK_ROWS = 64
BLOCK_COLS = 128


@triton.jit
def _score_mse_rows_kernel(
    rs_ptr, cs_ptr, rt_ptr, ct_ptr,  # row / column operands, student (s) and teacher (t): (G, H, L, D)
    mask_ptr, end_ptr, count_ptr,  # mask (B, L) int8; end (B,) one past the last valid position; count ()
    drows_ptr, loss_ptr,  # d loss / d rows_s (G, H, L, D_s); partial squared sums (G·H·row blocks)
    H, L, B, D_S, D_T,
    s_rs_g, s_rs_h, s_rs_l, s_rs_d,
    s_cs_g, s_cs_h, s_cs_l, s_cs_d,
    s_rt_g, s_rt_h, s_rt_l, s_rt_d,
    s_ct_g, s_ct_h, s_ct_l, s_ct_d,
    s_dr_g, s_dr_h, s_dr_l, s_dr_d,
    s_mask_b,
    scale_s, scale_t,
    HAS_MASK: tl.constexpr, WITH_LOSS: tl.constexpr, WITH_GRAD: tl.constexpr,
    PREC_S: tl.constexpr, PREC_T: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_DS: tl.constexpr, BLOCK_DT: tl.constexpr,
):
    """One (row block, g, h): sum E² and E·col_s over valid columns; invalid rows/cols load as 0, so E is 0 there."""
    pid_r = tl.program_id(0)
    pid_gh = tl.program_id(1)
    g = pid_gh // H
    h = pid_gh % H
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_ds = tl.arange(0, BLOCK_DS)
    offs_dt = tl.arange(0, BLOCK_DT)
    if HAS_MASK:
        b = g % B
        end = tl.load(end_ptr + b)
        row_ok = (offs_r < end) & (tl.load(mask_ptr + b * s_mask_b + offs_r, mask=offs_r < L, other=0) != 0)
    else:
        end = L
        row_ok = offs_r < L
    rows_s_RD = tl.load(
        rs_ptr + g * s_rs_g + h * s_rs_h + offs_r[:, None] * s_rs_l + offs_ds[None, :] * s_rs_d,
        mask=row_ok[:, None] & (offs_ds[None, :] < D_S), other=0.0,
    )
    rows_t_RD = tl.load(
        rt_ptr + g * s_rt_g + h * s_rt_h + offs_r[:, None] * s_rt_l + offs_dt[None, :] * s_rt_d,
        mask=row_ok[:, None] & (offs_dt[None, :] < D_T), other=0.0,
    )
    sq_R = tl.zeros((BLOCK_R,), dtype=tl.float32)
    drows_RD = tl.zeros((BLOCK_R, BLOCK_DS), dtype=tl.float32)
    hi = tl.where(pid_r * BLOCK_R < end, end, 0)  # a block of padding rows skips the column walk
    for c0 in range(0, hi, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        col_ok = offs_c < end
        if HAS_MASK:
            col_ok = col_ok & (tl.load(mask_ptr + b * s_mask_b + offs_c, mask=offs_c < L, other=0) != 0)
        cols_s_CD = tl.load(
            cs_ptr + g * s_cs_g + h * s_cs_h + offs_c[:, None] * s_cs_l + offs_ds[None, :] * s_cs_d,
            mask=col_ok[:, None] & (offs_ds[None, :] < D_S), other=0.0,
        )
        cols_t_CD = tl.load(
            ct_ptr + g * s_ct_g + h * s_ct_h + offs_c[:, None] * s_ct_l + offs_dt[None, :] * s_ct_d,
            mask=col_ok[:, None] & (offs_dt[None, :] < D_T), other=0.0,
        )
        e_RC = tl.dot(rows_s_RD, tl.trans(cols_s_CD), input_precision=PREC_S) * scale_s
        e_RC -= tl.dot(rows_t_RD, tl.trans(cols_t_CD), input_precision=PREC_T) * scale_t
        if WITH_LOSS:
            sq_R += tl.sum(e_RC * e_RC, axis=1)
        if WITH_GRAD:
            drows_RD += tl.dot(e_RC.to(cs_ptr.dtype.element_ty), cols_s_CD, input_precision=PREC_S)
    if WITH_LOSS:
        tl.store(loss_ptr + pid_gh * tl.num_programs(0) + pid_r, tl.sum(sq_R))
    if WITH_GRAD:
        drows_RD *= 2.0 * scale_s / tl.load(count_ptr)
        tl.store(
            drows_ptr + g * s_dr_g + h * s_dr_h + offs_r[:, None] * s_dr_l + offs_ds[None, :] * s_dr_d,
            drows_RD.to(drows_ptr.dtype.element_ty),
            mask=(offs_r[:, None] < L) & (offs_ds[None, :] < D_S),
        )


def _precision(dtype):
    """Exact fp32 products for fp32 inputs (tf32 would swamp a small E); bf16/fp16 use tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch(rows_s, cols_s, rows_t, cols_t, mask_BL, end_B, count, with_loss, with_grad, block_r, block_c):
    """Run one role of the kernel over (G, H, L, D) tensors; returns (partial squared sums, d rows_s)."""
    G, H, L, D_s = rows_s.shape
    D_t = rows_t.shape[-1]
    n_rb = triton.cdiv(L, block_r)
    partial = torch.empty(G * H * n_rb if with_loss else 1, device=rows_s.device, dtype=torch.float32)
    drows = torch.empty_like(rows_s) if with_grad else rows_s
    has_mask = mask_BL is not None
    mask_arg = mask_BL if has_mask else rows_s
    _score_mse_rows_kernel[(n_rb, G * H)](
        rows_s, cols_s, rows_t, cols_t, mask_arg, end_B if has_mask else count, count, drows, partial,
        H, L, mask_BL.shape[0] if has_mask else 1, D_s, D_t,
        *rows_s.stride(), *cols_s.stride(), *rows_t.stride(), *cols_t.stride(), *drows.stride(),
        mask_BL.stride(0) if has_mask else 0,
        D_s**-0.5, D_t**-0.5,
        HAS_MASK=has_mask, WITH_LOSS=with_loss, WITH_GRAD=with_grad,
        PREC_S=_precision(rows_s.dtype), PREC_T=_precision(rows_t.dtype),
        BLOCK_R=block_r, BLOCK_C=block_c,
        BLOCK_DS=max(16, triton.next_power_of_2(D_s)), BLOCK_DT=max(16, triton.next_power_of_2(D_t)),
        num_warps=8 if block_r >= 128 else 4,
    )
    return partial, (drows if with_grad else None)


def _check_shapes(q_s, k_s, q_t, k_t, key_padding_mask, n_pairs):
    """The kernel trusts its shapes (a wrong one reads out of bounds): refuse mismatches here."""
    shapes = [tuple(x.shape) for x in (q_s, k_s, q_t, k_t)]
    if shapes[0] != shapes[1] or shapes[2] != shapes[3] or shapes[0][:3] != shapes[2][:3]:
        raise ValueError(f"attention_score_mse: q_s, k_s, q_t, k_t must be (B, H, L, D_s) twice and (B, H, L, D_t) twice, got {shapes}")
    want = (q_s.shape[0] // n_pairs, q_s.shape[2])
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != want:
        raise ValueError(f"attention_score_mse: key_padding_mask must be (B, L) = {want}, got {tuple(key_padding_mask.shape)}")


class _AttentionScoreMSE(torch.autograd.Function):
    """Sum over P stacked layer pairs of each pair's mean squared score difference; G = P·B on dim 0."""

    @staticmethod
    def forward(ctx, q_s, k_s, q_t, k_t, key_padding_mask, n_pairs, block_r, block_c):
        G, H, L, _ = q_s.shape
        check_device(_score_mse_rows_kernel, q_s, "attention_score_mse")
        _check_shapes(q_s, k_s, q_t, k_t, key_padding_mask, n_pairs)
        grad_dtype = q_s.dtype
        # The interpreter's tl.dot multiplies bf16 bit patterns (triton-lang/triton#11584): upcast there.
        if interpreted(_score_mse_rows_kernel) and torch.bfloat16 in (q_s.dtype, q_t.dtype):
            q_s, k_s, q_t, k_t = (x.float() for x in (q_s, k_s, q_t, k_t))
        if key_padding_mask is None:
            mask_BL = end_B = None
            count = torch.full((), float(G // n_pairs * H * L * L), device=q_s.device, dtype=torch.float32)
        else:
            mask_BL = key_padding_mask.to(device=q_s.device, dtype=torch.int8).contiguous()
            n_B = mask_BL.sum(1, dtype=torch.float64)
            count = (H * (n_B * n_B).sum()).clamp(min=1).float()
            pos_L = torch.arange(1, L + 1, device=q_s.device, dtype=torch.int32)
            end_B = (pos_L * mask_BL).amax(1).to(torch.int32)  # one past the last real token
        grad_q, grad_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wide = max(q_s.element_size(), q_t.element_size()) >= 4  # fp32 tiles: halve rows to fit shared memory
        br = min(block_r // 2 if wide else block_r, max(16, triton.next_power_of_2(L)))
        bc = min(block_c, max(16, triton.next_power_of_2(L)))
        partial, dq_s = _launch(q_s, k_s, q_t, k_t, mask_BL, end_B, count, True, grad_q, br, bc)
        dk_s = _launch(k_s, q_s, k_t, q_t, mask_BL, end_B, count, False, True, br, bc)[1] if grad_k else None
        ctx.save_for_backward(*(None if d is None else d.to(grad_dtype) for d in (dq_s, dk_s)))
        return partial.sum() / count

    @staticmethod
    def backward(ctx, grad_out):
        dq_s, dk_s = ctx.saved_tensors
        dq_s = dq_s.mul_(grad_out.to(dq_s.dtype)) if dq_s is not None else None
        dk_s = dk_s.mul_(grad_out.to(dk_s.dtype)) if dk_s is not None else None
        return dq_s, dk_s, None, None, None, None, None, None


def attention_score_mse(q_s, k_s, q_t, k_t, key_padding_mask=None, *, block_rows=BLOCK_ROWS, block_cols=BLOCK_COLS):
    """Fused `attention_score_mse_reference`: q/k (B, H, L, D_s|D_t), mask (B, L) bool True = real; grads to q_s, k_s.

    Backward may be called once (the saved gradients are scaled in place).
    """
    q_t, k_t = q_t.detach(), k_t.detach()
    return _AttentionScoreMSE.apply(q_s, k_s, q_t, k_t, key_padding_mask, 1, block_rows, block_cols)


def attention_score_mse_stacked(
    q_s, k_s, q_t, k_t, key_padding_mask=None, *, block_rows=BLOCK_ROWS, block_cols=BLOCK_COLS
):
    """Layer pairs already stacked as (P, B, H, L, D): the sum over P of each pair's mean, in two launches, no copy."""
    P, B = q_s.shape[:2]
    flat = [x.reshape(P * B, *x.shape[2:]) for x in (q_s, k_s, q_t.detach(), k_t.detach())]
    return _AttentionScoreMSE.apply(*flat, key_padding_mask, P, block_rows, block_cols)


def attention_score_mse_multi(pairs, key_padding_mask=None, *, block_rows=BLOCK_ROWS, block_cols=BLOCK_COLS):
    """Sum over layer pairs [(q_s, k_s, q_t, k_t), ...] of each pair's mean; pairs of equal shape share two launches.

    Stacking copies the inputs once, and still wins: on an H200 (RESULTS.md, 2026-11-28) the kernel
    took 1.08 ms for six pre-stacked pairs at batch 16 × 512 against 3.92 ms with two launches per
    pair. A caller that writes Q/K into a (P, B, H, L, D) buffer can use `attention_score_mse_stacked`
    and skip the copy.
    """
    groups = {}
    for pair in pairs:
        groups.setdefault(tuple((x.shape, x.dtype) for x in pair), []).append(pair)
    total = None
    for group in groups.values():
        stacked = [torch.stack(xs) for xs in zip(*group)]
        loss = attention_score_mse_stacked(*stacked, key_padding_mask, block_rows=block_rows, block_cols=block_cols)
        total = loss if total is None else total + loss
    return total


def attention_score_mse_gram(q_s, k_s, q_t, k_t, key_padding_mask=None):
    """Same loss through the Gram identity, per (b, h) with padded rows zeroed:

        Σ_ij (a·q_i·k_j − c·q'_i·k'_j)² = a²⟨QᵀQ, KᵀK⟩ − 2ac⟨QᵀQ', KᵀK'⟩ + c²⟨Q'ᵀQ', K'ᵀK'⟩

    O(L·D²) instead of O(L²·D) and plain PyTorch, but it cancels catastrophically when student ≈ teacher;
    kept to measure that trade-off, not used by default.
    """
    a, c = q_s.shape[-1] ** -0.5, q_t.shape[-1] ** -0.5
    q_t, k_t = q_t.detach().to(q_s.dtype), k_t.detach().to(q_s.dtype)
    if key_padding_mask is None:
        count = q_s.shape[0] * q_s.shape[1] * q_s.shape[2] ** 2
    else:
        keep_B1L1 = key_padding_mask[:, None, :, None].to(q_s.dtype)
        q_s, k_s, q_t, k_t = (x * keep_B1L1 for x in (q_s, k_s, q_t, k_t))
        n_B = key_padding_mask.sum(1).double()
        count = (q_s.shape[1] * (n_B * n_B).sum()).clamp(min=1).float()

    def inner(q1, k1, q2, k2):
        return ((q1.transpose(-1, -2) @ q2) * (k1.transpose(-1, -2) @ k2)).sum()

    total = a * a * inner(q_s, k_s, q_s, k_s) - 2 * a * c * inner(q_s, k_s, q_t, k_t)
    total = total + c * c * inner(q_t, k_t, q_t, k_t)
    return total.float() / count
