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

Why pair tables instead of a stacked (P, B, H, L, D) copy: the encoders hand Q/K over as strided
views (of Hugging Face's per-head reshapes, or of the fused layer's one Q/K/V product), one tensor
per layer. Stacking them cost a copy of every Q and K per step (on an H200, RESULTS.md 2026-11-28:
1.93 ms for six pairs at batch 16 × 512 including the copy, 0.95 ms for the kernel alone), and two
launches per pair cost more (3.92 ms). Here one launch serves all pairs: each operand is a base tensor
plus a table of element offsets from it, one per pair, with strides the pairs share.

Legend: P layer pairs, B batch, G = P·B pairs × batch, H heads, L sequence, D_s/D_t student/teacher
head width, R/C row/column tile, E = student − teacher score difference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pair_tables import pair_base, pair_groups, pair_tables
from .runtime import check_device, interpreted

# GPU tile defaults (D ≤ 128); small sequences shrink them to the next power of two (≥ 16, tl.dot's minimum).
# 64 × 128 from `benchmarks/kernels.py --sweep` on an H100 at commit 7bfc63b (issue #12): 0.72 ms for
# MonoShot's 7 pairs at batch 64 × 512 against 1.00 ms for the earlier 128 × 64.
BLOCK_ROWS = 64
BLOCK_COLS = 128


@triton.jit
def _score_mse_rows_kernel(
    rs_ptr, cs_ptr, rt_ptr, ct_ptr,  # row / column operands, student (s) and teacher (t): pair 0's (B, H, L, D)
    rs_off, cs_off, rt_off, ct_off,  # (P,) each: pair p's operand starts this many elements after pair 0's
    mask_ptr, end_ptr, count_ptr,  # mask (B, L) int8; end (B,) one past the last valid position; count ()
    drows_ptr, loss_ptr,  # d loss / d rows_s (G, H, L, D_s); partial squared sums (G·H·row blocks)
    H, L, B, D_S, D_T,
    s_rs_b, s_rs_h, s_rs_l, s_rs_d,
    s_cs_b, s_cs_h, s_cs_l, s_cs_d,
    s_rt_b, s_rt_h, s_rt_l, s_rt_d,
    s_ct_b, s_ct_h, s_ct_l, s_ct_d,
    s_dr_g, s_dr_h, s_dr_l, s_dr_d,
    s_mask_b,
    scale_s, scale_t,
    HAS_MASK: tl.constexpr, WITH_LOSS: tl.constexpr, WITH_GRAD: tl.constexpr, ALIGNED: tl.constexpr,
    PREC_S: tl.constexpr, PREC_T: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_DS: tl.constexpr, BLOCK_DT: tl.constexpr,
):
    """One (row block, g, h): sum E² and E·col_s over valid columns; invalid rows/cols load as 0, so E is 0 there."""
    pid_r = tl.program_id(0)
    pid_gh = tl.program_id(1)
    g = pid_gh // H
    h = pid_gh % H
    p = g // B
    b = (g % B).to(tl.int64)
    rs_ptr = pair_base(rs_ptr, rs_off, p, ALIGNED) + b * s_rs_b
    cs_ptr = pair_base(cs_ptr, cs_off, p, ALIGNED) + b * s_cs_b
    rt_ptr = pair_base(rt_ptr, rt_off, p, ALIGNED) + b * s_rt_b
    ct_ptr = pair_base(ct_ptr, ct_off, p, ALIGNED) + b * s_ct_b
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_ds = tl.arange(0, BLOCK_DS)
    offs_dt = tl.arange(0, BLOCK_DT)
    if HAS_MASK:
        end = tl.load(end_ptr + b)
        row_ok = (offs_r < end) & (tl.load(mask_ptr + b * s_mask_b + offs_r, mask=offs_r < L, other=0) != 0)
    else:
        end = L
        row_ok = offs_r < L
    rows_s_RD = tl.load(
        rs_ptr + h * s_rs_h + offs_r[:, None] * s_rs_l + offs_ds[None, :] * s_rs_d,
        mask=row_ok[:, None] & (offs_ds[None, :] < D_S), other=0.0,
    )
    rows_t_RD = tl.load(
        rt_ptr + h * s_rt_h + offs_r[:, None] * s_rt_l + offs_dt[None, :] * s_rt_d,
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
            cs_ptr + h * s_cs_h + offs_c[:, None] * s_cs_l + offs_ds[None, :] * s_cs_d,
            mask=col_ok[:, None] & (offs_ds[None, :] < D_S), other=0.0,
        )
        cols_t_CD = tl.load(
            ct_ptr + h * s_ct_h + offs_c[:, None] * s_ct_l + offs_dt[None, :] * s_ct_d,
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


def _launch(rows_s, cols_s, rows_t, cols_t, aligned, mask_BL, end_B, count, with_loss, with_grad, block_r, block_c):
    """Run one role of the kernel over P pairs of (B, H, L, D) operands (PairTables); returns (partial
    squared sums, d rows_s as (P·B, H, L, D_s))."""
    B, H, L, D_s = rows_s.base.shape
    D_t = rows_t.base.shape[-1]
    G = B * rows_s.offsets.numel()
    n_rb = triton.cdiv(L, block_r)
    device = rows_s.base.device
    partial = torch.empty(G * H * n_rb if with_loss else 1, device=device, dtype=torch.float32)
    drows = torch.empty((G, H, L, D_s), device=device, dtype=rows_s.base.dtype) if with_grad else partial
    has_mask = mask_BL is not None
    mask_arg = mask_BL if has_mask else count
    _score_mse_rows_kernel[(n_rb, G * H)](
        rows_s.base, cols_s.base, rows_t.base, cols_t.base,
        rows_s.offsets, cols_s.offsets, rows_t.offsets, cols_t.offsets,
        mask_arg, end_B if has_mask else count, count, drows, partial,
        H, L, B, D_s, D_t,
        *rows_s.base.stride(), *cols_s.base.stride(), *rows_t.base.stride(), *cols_t.base.stride(),
        *(drows.stride() if with_grad else (0, 0, 0, 0)),
        mask_BL.stride(0) if has_mask else 0,
        D_s**-0.5, D_t**-0.5,
        HAS_MASK=has_mask, WITH_LOSS=with_loss, WITH_GRAD=with_grad, ALIGNED=aligned,
        PREC_S=_precision(rows_s.base.dtype), PREC_T=_precision(rows_t.base.dtype),
        BLOCK_R=block_r, BLOCK_C=block_c,
        BLOCK_DS=max(16, triton.next_power_of_2(D_s)), BLOCK_DT=max(16, triton.next_power_of_2(D_t)),
        num_warps=8 if block_r >= 128 else 4,
    )
    return partial, (drows if with_grad else None)


def _check_shapes(q_s, k_s, q_t, k_t, key_padding_mask):
    """The kernel trusts its shapes (a wrong one reads out of bounds): refuse mismatches here."""
    shapes = [tuple(x.shape) for x in (q_s, k_s, q_t, k_t)]
    if shapes[0] != shapes[1] or shapes[2] != shapes[3] or shapes[0][:3] != shapes[2][:3]:
        raise ValueError(f"attention_score_mse: q_s, k_s, q_t, k_t must be (B, H, L, D_s) twice and (B, H, L, D_t) twice, got {shapes}")
    want = (q_s.shape[0], q_s.shape[2])
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != want:
        raise ValueError(f"attention_score_mse: key_padding_mask must be (B, L) = {want}, got {tuple(key_padding_mask.shape)}")


class _AttentionScoreMSE(torch.autograd.Function):
    """Sum over P layer pairs of each pair's mean squared score difference. Inputs after the four
    settings: P student queries, P student keys, P teacher queries, P teacher keys, each (B, H, L, D),
    one shape, strides and dtype per role; gradients come back as views of one (P, B, H, L, D_s) buffer."""

    @staticmethod
    def forward(ctx, key_padding_mask, n_pairs, block_r, block_c, *tensors):
        q_s, k_s, q_t, k_t = (list(tensors[i * n_pairs : (i + 1) * n_pairs]) for i in range(4))
        B, H, L, _ = q_s[0].shape
        check_device(_score_mse_rows_kernel, q_s[0], "attention_score_mse")
        _check_shapes(q_s[0], k_s[0], q_t[0], k_t[0], key_padding_mask)
        grad_dtype = q_s[0].dtype
        # The interpreter's tl.dot multiplies bf16 bit patterns (triton-lang/triton#11584): upcast there.
        if interpreted(_score_mse_rows_kernel) and torch.bfloat16 in (q_s[0].dtype, q_t[0].dtype):
            q_s, k_s, q_t, k_t = ([x.float() for x in xs] for xs in (q_s, k_s, q_t, k_t))
        (tq_s, tk_s, tq_t, tk_t), aligned = pair_tables(q_s, k_s, q_t, k_t)
        if key_padding_mask is None:
            mask_BL = end_B = None
            count = torch.full((), float(B * H * L * L), device=q_s[0].device, dtype=torch.float32)
        else:
            mask_BL = key_padding_mask.to(device=q_s[0].device, dtype=torch.int8).contiguous()
            n_B = mask_BL.sum(1, dtype=torch.float64)
            count = (H * (n_B * n_B).sum()).clamp(min=1).float()
            pos_L = torch.arange(1, L + 1, device=q_s[0].device, dtype=torch.int32)
            end_B = (pos_L * mask_BL).amax(1).to(torch.int32)  # one past the last real token
        grad_q = any(ctx.needs_input_grad[4 : 4 + n_pairs])
        grad_k = any(ctx.needs_input_grad[4 + n_pairs : 4 + 2 * n_pairs])
        wide = max(q_s[0].element_size(), q_t[0].element_size()) >= 4  # fp32 tiles: halve rows to fit shared memory
        br = min(block_r // 2 if wide else block_r, max(16, triton.next_power_of_2(L)))
        bc = min(block_c, max(16, triton.next_power_of_2(L)))
        partial, dq_s = _launch(tq_s, tk_s, tq_t, tk_t, aligned, mask_BL, end_B, count, True, grad_q, br, bc)
        dk_s = _launch(tk_s, tq_s, tk_t, tq_t, aligned, mask_BL, end_B, count, False, True, br, bc)[1] if grad_k else None
        ctx.n_pairs = n_pairs
        ctx.save_for_backward(*(None if d is None else d.to(grad_dtype) for d in (dq_s, dk_s)))
        return partial.sum() / count

    @staticmethod
    def backward(ctx, grad_out):
        P = ctx.n_pairs
        grads = []
        for d in ctx.saved_tensors:
            if d is None:
                grads += [None] * P
            else:
                grads += list(d.mul_(grad_out.to(d.dtype)).unflatten(0, (P, -1)).unbind(0))
        return None, None, None, None, *grads, *[None] * (2 * P)


def attention_score_mse(q_s, k_s, q_t, k_t, key_padding_mask=None, *, block_rows=BLOCK_ROWS, block_cols=BLOCK_COLS):
    """Fused `attention_score_mse_reference`: q/k (B, H, L, D_s|D_t), mask (B, L) bool True = real; grads to q_s, k_s.

    Backward may be called once (the saved gradients are scaled in place).
    """
    return attention_score_mse_multi([(q_s, k_s, q_t, k_t)], key_padding_mask, block_rows=block_rows, block_cols=block_cols)


def attention_score_mse_multi(pairs, key_padding_mask=None, *, block_rows=BLOCK_ROWS, block_cols=BLOCK_COLS):
    """Sum over layer pairs [(q_s, k_s, q_t, k_t), ...] of each pair's mean, read in place (no stacking copy):
    pairs whose four tensors agree in shape, strides and dtype share one pair of launches.

    Backward may be called once (the saved gradients are scaled in place).
    """
    total = None
    for group in pair_groups(pairs):
        q_s, k_s, q_t, k_t = (list(xs) for xs in zip(*group))
        teacher = [x.detach() for x in q_t + k_t]
        loss = _AttentionScoreMSE.apply(key_padding_mask, len(group), block_rows, block_cols, *q_s, *k_s, *teacher)
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
