"""Fused linear Hinton-KL + MLM cross-entropy over a large vocabulary, never holding N×V logits.

    loss = ce_weight · mean CE(h_s w_sᵀ + b_s, labels)
         + kl_weight · T² · mean KL(softmax(z_t/T) ‖ softmax(z_s/T))

over rows with label ≠ −100 (`fused_linear_distill_loss_reference` is the contract).

How: logits are made chunk by chunk (row chunk × vocabulary chunk) by cuBLAS; Triton kernels do
the rest in one read each. `_stats_kernel` folds a chunk into per-row online log-sum-exp statistics
(student at T=1 and at T, teacher at T, the teacher-weighted logit gap for KL, the label's logit),
`_combine_kernel` merges them into the running ones; `_grad_kernel` overwrites the student chunk
with d loss / d logits, which two matmuls turn into d h_s and d w_s. Gradients are made in the
forward pass (the loss is a scalar), so backward is one multiply per gradient.

Why a row's statistics are split over programs: one program per row walking 250 000 columns left
about 500 programs per chunk, too few to hide memory latency (16 ms of kernel time per step on an
H100, issue #12). Each program now takes `split_v` columns and writes partial statistics, and the
gradient kernel runs one program per (GRAD_ROWS rows, block) tile. At T = 1 the student's two
softmaxes coincide and are computed once (`SAME_T`).

Why the gradient kernel sums columns: the bias gradient is the column sum of d logits. Summed
afterwards it is one more read of every d-logits chunk (N × V values, 2.5 GB in bf16 at N = 4 915);
summed in the kernel, while each tile is in registers, it costs a write of GRAD_ROWS-times fewer
fp32 partials and their sum.

Why rows are chunked before the vocabulary: with the whole vocabulary in one chunk each row chunk's
logits are computed once (4 matmuls in all: z_s, z_t, d h_s, d w_s). Splitting the vocabulary too
(`vocab_chunk`) bounds memory further but recomputes both models' logits in a second pass (6 matmuls).
The default row chunk keeps each logits buffer near `CHUNK_BYTES`.

Why logits rows are padded: XLM-R's V = 250 002 is not a multiple of 8, so a logits buffer with
row stride C puts every row but the first at a misaligned address and cuBLAS falls back to its
align-2 kernels (on an H100: 7.9 ms instead of 2.9 ms for one 4 915 × 768 × V GEMM, issue #12).
Each buffer row is therefore `padded_stride(C)` elements long; the GEMMs write and read only its
first C columns (the kernels loop over `n_cols`), so the padding never enters a sum.

Legend: N rows (masked positions), V vocabulary, D_s/D_t hidden widths, R rows in a chunk,
C vocabulary columns in a chunk, P ≥ C the padded row stride of a logits buffer, T temperature.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .runtime import check_device

# Per logits buffer (student and teacher each hold one): ~1 070 rows of V = 250 002 in bf16. From the
# H200 sweep (RESULTS.md, 2026-11-28): 1 024-row chunks 25.6 ms and 1.32 GiB extra, ~528 rows 27.5 ms,
# 2 048 rows 26.5 ms and 2.28 GiB (over the 1.5 GiB).
CHUNK_BYTES = 512 * 2**20
BLOCK_V = 1024  # vocabulary columns per kernel step (and per gradient program)
SPLIT_V = 8192  # vocabulary columns per statistics program (so a row's statistics run in parallel)
GRAD_ROWS = 16  # rows per gradient program: its column sums are one row of the bias gradient's partials
ROW_ALIGN = 128  # logits buffer rows start at multiples of 128 elements (256 B in bf16)

# Rows of the (9, N) fp32 statistics buffer. KL = E_t[g] + log E_t[exp(-g)] with g = (z_t - z_s)/T
# (E_t: under softmax(z_t/T)); X_TT accumulates E_t[g], X_EG E_t[expm1(-g)] so that the log is a
# log1p of a small number. The obvious form E_t[g] - lse_t + lse_s cancels two O(log V) numbers and
# loses ~2 % of a KL of 1e-5 in float32 (a student close to the teacher, late in training).
M_S1, L_S1, M_ST, L_ST, M_TT, L_TT, X_TT, Z_Y, X_EG = range(9)


@triton.jit
def _stats_kernel(
    zs_ptr, zt_ptr, s_zs, s_zt, n_cols, col0, labels_ptr, row0, part_ptr, inv_T,
    SPLIT: tl.constexpr, BLOCK: tl.constexpr, SAME_T: tl.constexpr,
):
    """Statistics of one row's columns [s·SPLIT, (s+1)·SPLIT) of an (R, C) logits chunk, program (r, s),
    into partials (9, R, S); `_combine_kernel` folds them into the running statistics."""
    r = tl.program_id(0).to(tl.int64)  # r · row stride passes 2³¹ for large chunks
    s = tl.program_id(1)
    R, S = tl.num_programs(0), tl.num_programs(1)
    label = tl.load(labels_ptr + row0 + r)
    m_s1 = tl.full([], float("-inf"), tl.float32)  # a tensor from the start: loop-carried values keep one type
    l_s1 = 0.0
    m_sT = tl.full([], float("-inf"), tl.float32)
    l_sT = 0.0
    m_tT = tl.full([], float("-inf"), tl.float32)
    l_tT = 0.0
    x_tT = 0.0
    z_y = 0.0
    x_eg = 0.0
    start = s * SPLIT
    end = tl.minimum(start + SPLIT, n_cols)  # every block below starts before n_cols: never all padding
    for v0 in range(start, end, BLOCK):
        offs = v0 + tl.arange(0, BLOCK)
        ok = offs < end
        zs = tl.load(zs_ptr + r * s_zs + offs, mask=ok, other=0.0).to(tl.float32)
        zt = tl.load(zt_ptr + r * s_zt + offs, mask=ok, other=0.0).to(tl.float32)
        z_y += tl.sum(tl.where(ok & (offs == label - col0), zs, 0.0))
        gap = (zt - zs) * inv_T
        zs = tl.where(ok, zs, float("-inf"))  # padding lanes vanish from max and exp
        zt = tl.where(ok, zt, float("-inf"))
        m_new = tl.maximum(m_s1, tl.max(zs))
        l_s1 = l_s1 * tl.exp(m_s1 - m_new) + tl.sum(tl.exp(zs - m_new))
        m_s1 = m_new
        if not SAME_T:
            zsT = zs * inv_T
            m_new = tl.maximum(m_sT, tl.max(zsT))
            l_sT = l_sT * tl.exp(m_sT - m_new) + tl.sum(tl.exp(zsT - m_new))
            m_sT = m_new
        ztT = zt * inv_T
        m_new = tl.maximum(m_tT, tl.max(ztT))
        alpha = tl.exp(m_tT - m_new)
        pt = tl.exp(ztT - m_new)
        l_tT = l_tT * alpha + tl.sum(pt)
        x_tT = x_tT * alpha + tl.sum(pt * gap)
        # expm1(-gap) without cancellation: -gap·(1 - gap/2 + gap²/6) for small |gap|, else exp(-gap) - 1
        em1 = tl.where(tl.abs(gap) < 1e-2, -gap * (1.0 - gap * 0.5 * (1.0 - gap / 3.0)), tl.exp(-gap) - 1.0)
        x_eg = x_eg * alpha + tl.sum(pt * em1)
        m_tT = m_new
    if SAME_T:
        m_sT = m_s1
        l_sT = l_s1
    at = part_ptr + r * S + s
    RS = R * S
    tl.store(at + 0 * RS, m_s1)
    tl.store(at + 1 * RS, l_s1)
    tl.store(at + 2 * RS, m_sT)
    tl.store(at + 3 * RS, l_sT)
    tl.store(at + 4 * RS, m_tT)
    tl.store(at + 5 * RS, l_tT)
    tl.store(at + 6 * RS, x_tT)
    tl.store(at + 7 * RS, z_y)
    tl.store(at + 8 * RS, x_eg)


@triton.jit
def _combine_kernel(part_ptr, stats_ptr, row0, N, R, S, BLOCK_S: tl.constexpr):
    """Fold row r's S partials into its running statistics (row0 + r of the (9, N) buffer)."""
    r = tl.program_id(0).to(tl.int64)
    n = row0 + r
    offs = tl.arange(0, BLOCK_S)
    ok = offs < S
    at = part_ptr + r * S + offs
    RS = R * S
    for k in tl.static_range(0, 4, 2):  # (max, sum) pairs of the student at T=1 and at T
        m_run = tl.load(stats_ptr + k * N + n)
        l_run = tl.load(stats_ptr + (k + 1) * N + n)
        m_p = tl.load(at + k * RS, mask=ok, other=float("-inf"))
        l_p = tl.load(at + (k + 1) * RS, mask=ok, other=0.0)
        m = tl.maximum(m_run, tl.max(m_p))
        tl.store(stats_ptr + (k + 1) * N + n, l_run * tl.exp(m_run - m) + tl.sum(l_p * tl.exp(m_p - m)))
        tl.store(stats_ptr + k * N + n, m)
    m_run = tl.load(stats_ptr + 4 * N + n)  # teacher: the weighted sums share its max
    m_p = tl.load(at + 4 * RS, mask=ok, other=float("-inf"))
    m = tl.maximum(m_run, tl.max(m_p))
    alpha_run = tl.exp(m_run - m)
    alpha_p = tl.exp(m_p - m)
    for k in tl.static_range(5, 9):
        part = tl.load(at + k * RS, mask=ok, other=0.0)
        run = tl.load(stats_ptr + k * N + n)
        if k == 7:  # the label's logit: a plain sum
            tl.store(stats_ptr + k * N + n, run + tl.sum(part))
        else:
            tl.store(stats_ptr + k * N + n, run * alpha_run + tl.sum(part * alpha_p))
    tl.store(stats_ptr + 4 * N + n, m)


@triton.jit
def _grad_kernel(
    zs_ptr, zt_ptr, s_zs, s_zt, n_cols, col0, row0, R, N, labels_ptr, lse_ptr, count_ptr, db_part_ptr, s_db,
    ce_weight, kl_scale, inv_T,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, SAME_T: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Overwrite a (ROWS rows, BLOCK columns) tile of student logits with d loss / d logits
    = ce_w·(p_s − onehot)/n + kl_w·T·(p_s^T − p_t^T)/n; with HAS_BIAS, also write the tile's column
    sums (its share of the bias gradient) to row `program_id(0)` of the (R / ROWS, C) partials."""
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n_cols
    inv_count = 1.0 / tl.load(count_ptr)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    first = tl.program_id(0).to(tl.int64) * ROWS  # r · row stride passes 2³¹ for large chunks
    for i in range(0, ROWS):
        r = first + i
        in_chunk = r < R  # the last program of a chunk may have fewer rows
        here = ok & (offs * 0 + r < R)  # compared as a block: Triton's interpreter will not & a block with a scalar
        n = row0 + r
        label = tl.load(labels_ptr + n, mask=in_chunk, other=-100)
        keep = label != -100
        a = tl.where(keep, ce_weight * inv_count, 0.0)
        c = tl.where(keep, kl_scale * inv_count, 0.0)
        lse_s1 = tl.load(lse_ptr + 0 * N + n, mask=in_chunk, other=0.0)
        lse_sT = tl.load(lse_ptr + 1 * N + n, mask=in_chunk, other=0.0)
        lse_tT = tl.load(lse_ptr + 2 * N + n, mask=in_chunk, other=0.0)
        zs = tl.load(zs_ptr + r * s_zs + offs, mask=here, other=0.0).to(tl.float32)
        zt = tl.load(zt_ptr + r * s_zt + offs, mask=here, other=0.0).to(tl.float32)
        p_s1 = tl.exp(zs - lse_s1)
        if SAME_T:
            p_sT = p_s1
        else:
            p_sT = tl.exp(zs * inv_T - lse_sT)
        p_tT = tl.exp(zt * inv_T - lse_tT)
        g = a * (p_s1 - tl.where(offs == label - col0, 1.0, 0.0)) + c * (p_sT - p_tT)
        tl.store(zs_ptr + r * s_zs + offs, g.to(zs_ptr.dtype.element_ty), mask=here)
        db += tl.where(here, g, 0.0)
    if HAS_BIAS:
        tl.store(db_part_ptr + tl.program_id(0) * s_db + offs, db, mask=ok)


def _check_shapes(h_s, w_s, b_s, h_t, w_t, b_t, labels):
    """The kernels trust their shapes (a wrong one reads out of bounds): refuse mismatches here."""
    (N, D_s), (V, D_t) = h_s.shape, w_t.shape
    expected = {"h_s": (N, D_s), "w_s": (V, D_s), "b_s": (V,), "h_t": (N, D_t), "w_t": (V, D_t), "b_t": (V,), "labels": (N,)}
    given = {"h_s": h_s, "w_s": w_s, "b_s": b_s, "h_t": h_t, "w_t": w_t, "b_t": b_t, "labels": labels}
    wrong = [f"{name} {tuple(x.shape)} (want {expected[name]})" for name, x in given.items() if x is not None and tuple(x.shape) != expected[name]]
    if wrong:
        raise ValueError(f"fused_linear_distill_loss: shapes do not fit together: {', '.join(wrong)}")


def padded_stride(columns: int) -> int:
    return -(-columns // ROW_ALIGN) * ROW_ALIGN


def logits_buffer(rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable (rows, P) buffer for logits chunks of up to `columns` columns; P = padded_stride(columns)."""
    return torch.empty(rows, padded_stride(columns), device=device, dtype=dtype)


def _aligned_parts(columns: int) -> list[tuple[int, int]]:
    """[0, columns) as a part whose width is a multiple of ROW_ALIGN and the short rest.

    Padding the buffer rows was not enough: on an H200 (RESULTS.md, 2026-11-28) a whole-vocabulary
    chunk still ran 51.5 ms against 30.1 ms for 32 768-column chunks, because cuBLAS also picks
    its narrow kernels when a GEMM dimension (250 002) is not a multiple of 8. Each GEMM of the op
    is therefore two: the aligned bulk and a tail of under ROW_ALIGN columns."""
    bulk = columns // ROW_ALIGN * ROW_ALIGN
    return [(0, columns)] if bulk in (0, columns) else [(0, bulk), (bulk, columns)]


def _logits(h_RD, w_VD, b_V, v0, v1, buf_RP):
    """One (R, C) logits chunk written into the reused buffer (no allocation per chunk): a view of
    its first R rows and C columns, row stride P, so every row starts aligned."""
    out_RC = buf_RP[: h_RD.shape[0], : min(v1, w_VD.shape[0]) - v0]  # the last chunk may be short
    for c0, c1 in _aligned_parts(out_RC.shape[1]):
        w_CD, out = w_VD[v0 + c0 : v0 + c1], out_RC[:, c0:c1]
        if b_V is None:
            torch.mm(h_RD, w_CD.T, out=out)
        else:
            torch.addmm(b_V[v0 + c0 : v0 + c1], h_RD, w_CD.T, out=out)
    return out_RC


def _backward_gemms(g_RC, h_RD, w_VD, v0, dh_RD, dw_VD, accumulate_dw):
    """dh_RD = g · w[v0:v0+C] and d w[v0:v0+C] = (or += when `accumulate_dw`) gᵀ · h, in aligned parts."""
    for c0, c1 in _aligned_parts(g_RC.shape[1]):
        g_part = g_RC[:, c0:c1]
        dh_RD.addmm_(g_part, w_VD[v0 + c0 : v0 + c1], beta=1.0 if c0 else 0.0)
        dw_VD[v0 + c0 : v0 + c1].addmm_(g_part.T, h_RD, beta=1.0 if accumulate_dw else 0.0)


def _run(h_s, w_s, b_s, h_t, w_t, b_t, labels, T, ce_weight, kl_weight, need_grad, row_chunk, vocab_chunk, block_v, split_v):
    """Loss, unweighted CE and T²·KL means, and (d h_s, d w_s, d b_s) when `need_grad` (else Nones)."""
    check_device(_stats_kernel, h_s, "fused_linear_distill_loss")
    _check_shapes(h_s, w_s, b_s, h_t, w_t, b_t, labels)
    N, V = h_s.shape[0], w_s.shape[0]
    C = V if vocab_chunk is None else max(1, min(vocab_chunk, V))
    R = row_chunk or max(16, CHUNK_BYTES // (C * max(h_s.element_size(), h_t.element_size())) // 16 * 16)
    block = min(block_v, triton.next_power_of_2(C))
    split = max(block, split_v // block * block)  # columns per statistics program: a multiple of the block
    S = triton.cdiv(C, split)
    same_T = T == 1.0
    labels = labels.contiguous()
    keep_N = labels != -100
    count = keep_N.sum().clamp(min=1).float()
    stats = torch.zeros(9, N, device=h_s.device, dtype=torch.float32)
    stats[[M_S1, M_ST, M_TT]] = float("-inf")
    partials = torch.empty(9 * min(R, N) * S, device=h_s.device, dtype=torch.float32)  # (9, rows, splits) per call
    lse = torch.empty(3, N, device=h_s.device, dtype=torch.float32)
    buf_s = logits_buffer(min(R, N), C, h_s.dtype, h_s.device)
    buf_t = logits_buffer(min(R, N), C, h_t.dtype, h_t.device)
    dh_s = torch.empty(h_s.shape, device=h_s.device, dtype=h_s.dtype) if need_grad else None
    dw_s = (torch.empty if N else torch.zeros)(w_s.shape, device=w_s.device, dtype=w_s.dtype) if need_grad else None
    db_s = torch.zeros(V, device=h_s.device, dtype=torch.float32) if need_grad and b_s is not None else None
    grad_rows = max(1, min(GRAD_ROWS, R, N))  # (fewer only for chunks of under 16 rows)
    db_parts = torch.empty(triton.cdiv(min(R, N), grad_rows) if db_s is not None else 1, C, device=h_s.device, dtype=torch.float32)
    for r0 in range(0, N, R):
        r1 = min(r0 + R, N)
        hs_RD, ht_RD = h_s[r0:r1], h_t[r0:r1]

        def chunk(v0):
            return _logits(hs_RD, w_s, b_s, v0, v0 + C, buf_s), _logits(ht_RD, w_t, b_t, v0, v0 + C, buf_t)

        for v0 in range(0, V, C):  # pass 1: statistics over the whole vocabulary
            zs_RC, zt_RC = chunk(v0)
            n_cols = zs_RC.shape[1]
            grid = (r1 - r0, triton.cdiv(n_cols, split))
            part = partials[: 9 * grid[0] * grid[1]]
            _stats_kernel[grid](
                zs_RC, zt_RC, zs_RC.stride(0), zt_RC.stride(0), n_cols, v0, labels, r0, part, 1.0 / T,
                SPLIT=split, BLOCK=block, SAME_T=same_T,
            )
            _combine_kernel[(r1 - r0,)](part, stats, r0, N, r1 - r0, grid[1], BLOCK_S=triton.next_power_of_2(grid[1]))
        s = stats[:, r0:r1]
        lse[:, r0:r1] = s[[M_S1, M_ST, M_TT]] + s[[L_S1, L_ST, L_TT]].log()
        if not need_grad:
            continue
        dh_acc_RD = None if C == V else torch.zeros(r1 - r0, h_s.shape[1], device=h_s.device, dtype=torch.float32)
        for v0 in range(0, V, C):  # pass 2: d logits chunk by chunk (one chunk: reuse pass 1's logits)
            if C != V:
                zs_RC, zt_RC = chunk(v0)
            grid = (triton.cdiv(r1 - r0, grad_rows), triton.cdiv(zs_RC.shape[1], block))
            _grad_kernel[grid](
                zs_RC, zt_RC, zs_RC.stride(0), zt_RC.stride(0), zs_RC.shape[1], v0, r0, r1 - r0, N, labels, lse, count,
                db_parts, db_parts.stride(0), float(ce_weight), float(kl_weight) * T, 1.0 / T,
                ROWS=grad_rows, BLOCK=block, SAME_T=same_T, HAS_BIAS=db_s is not None,
            )
            g_RC, v1 = zs_RC, v0 + zs_RC.shape[1]
            dh_RD = dh_s[r0:r1] if dh_acc_RD is None else torch.empty_like(hs_RD)  # one chunk: straight into d h
            _backward_gemms(g_RC, hs_RD, w_s, v0, dh_RD, dw_s, accumulate_dw=r0 > 0)
            if dh_acc_RD is not None:
                dh_acc_RD += dh_RD.float()
            if db_s is not None:
                db_s[v0:v1] += db_parts[: grid[0], : v1 - v0].sum(0)
        if dh_acc_RD is not None:
            dh_s[r0:r1] = dh_acc_RD
    ce_N = lse[0] - stats[Z_Y]
    kl_N = T * T * (stats[X_TT] / stats[L_TT] + torch.log1p(stats[X_EG] / stats[L_TT]))
    ce = (ce_N * keep_N).sum() / count
    kl = (kl_N * keep_N).sum() / count
    loss = ce_weight * ce + kl_weight * kl
    if db_s is not None:
        db_s = db_s.to(b_s.dtype)
    return loss, ce, kl, (dh_s, dw_s, db_s)


class _FusedLinearDistill(torch.autograd.Function):
    """Loss and its components in forward (gradients computed there too); backward scales them."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, labels, T, ce_weight, kl_weight, row_chunk, vocab_chunk, block_v, split_v):
        need_grad = any(ctx.needs_input_grad[:3])
        loss, ce, kl, grads = _run(
            h_s, w_s, b_s, h_t, w_t, b_t, labels, T, ce_weight, kl_weight, need_grad, row_chunk, vocab_chunk, block_v, split_v
        )
        ctx.save_for_backward(*grads)
        ctx.mark_non_differentiable(ce, kl)
        return loss, ce, kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        grads = [
            g.mul_(grad_loss.to(g.dtype)) if g is not None and need else None
            for g, need in zip(ctx.saved_tensors, ctx.needs_input_grad[:3])
        ]
        return (*grads,) + (None,) * 11


def fused_linear_distill_loss(
    h_s, w_s, b_s, h_t, w_t, b_t, labels, temperature, ce_weight, kl_weight, return_components=False,
    *, row_chunk=None, vocab_chunk=None, block_v=BLOCK_V, split_v=SPLIT_V,
):
    """Fused `fused_linear_distill_loss_reference`: h (N, D), w (V, D), b (V) or None, labels (N) with −100 = ignore.

    Gradients reach h_s, w_s, b_s; the teacher's tensors are treated as constants. With
    `return_components`, also returns the detached unweighted CE and T²·KL means. `row_chunk` /
    `vocab_chunk` bound the logits chunk (default: whole vocabulary, rows sized by CHUNK_BYTES).
    Backward may be called once (the saved gradients are scaled in place).
    """
    loss, ce, kl = _FusedLinearDistill.apply(
        h_s, w_s, b_s, h_t.detach(), w_t.detach(), None if b_t is None else b_t.detach(), labels,
        float(temperature), float(ce_weight), float(kl_weight), row_chunk, vocab_chunk, block_v, split_v,
    )
    if return_components:
        return loss, ce, kl
    return loss
