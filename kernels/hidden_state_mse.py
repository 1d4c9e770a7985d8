"""Masked hidden-state MSE between student and teacher in one pass: loss and gradient together.

    loss = mean over valid tokens (mask True) and hidden units of (h_s − h_t)²

Why a kernel for an elementwise loss: the PyTorch form upcasts both bf16 inputs to fp32 copies,
keeps the fp32 difference for backward and runs a dozen launches per mapped layer pair. Here each
input is read once and d loss / d h_s = 2·(h_s − h_t)/(n·D) is written in the same pass (the loss is
a scalar, so backward is one multiply), with no fp32 temporaries. Padding rows load as zero on both
sides, so their difference and gradient are zero without a branch.

Why all layer pairs in one launch: a strategy maps up to a dozen pairs, and per pair the op made
about seven launches (mask, count, kernel, sums) behind an autograd node of its own; on an H200
(RESULTS.md, 2026-11-28) seven pairs took 2.40 ms that way against 1.01 ms for the compiled
reference, whose graph fuses the pairs. Here the mask and count are made once, one kernel reads
every pair in place through pair tables (`pair_tables.py`), and backward scales one buffer.
Legend: P pairs, B batch, L sequence, D hidden, R rows of the flattened (B·L, D) view in a tile, C columns.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pair_tables import pair_base, pair_groups, pair_tables
from .runtime import check_device

TILE_ELEMENTS = 4096  # R·C per program step
BLOCK_COLS = 1024  # the most columns per tile (fewer when D is smaller); `benchmarks/kernels.py --sweep` times others


@triton.jit
def _masked_mse_kernel(
    s_ptr, t_ptr, s_off, t_off,  # pair 0's student and teacher rows (R, D); (P,) element offsets of pair p's
    mask_ptr, count_ptr, grad_ptr, partial_ptr,  # mask (rows,) int8; count (); grad (P, rows, D); partial (P, row blocks)
    n_rows, D, s_row, t_row, g_pair, g_row,
    HAS_MASK: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One block of rows of one pair: partial sum of squared differences, and the rows' gradient."""
    p = tl.program_id(1)
    s_ptr = pair_base(s_ptr, s_off, p, ALIGNED)
    t_ptr = pair_base(t_ptr, t_off, p, ALIGNED)
    grad_ptr += p.to(tl.int64) * g_pair
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_range = rows < n_rows
    row_ok = in_range
    if HAS_MASK:
        row_ok = row_ok & (tl.load(mask_ptr + rows, mask=in_range, other=0) != 0)
    grad_scale = 2.0 / (tl.load(count_ptr) * D)
    sq_R = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for c0 in range(0, D, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < D
        s = tl.load(s_ptr + rows[:, None] * s_row + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        t = tl.load(t_ptr + rows[:, None] * t_row + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        diff = s.to(tl.float32) - t.to(tl.float32)
        sq_R += tl.sum(diff * diff, axis=1)
        tl.store(
            grad_ptr + rows[:, None] * g_row + cols[None, :], (diff * grad_scale).to(grad_ptr.dtype.element_ty),
            mask=in_range[:, None] & col_ok[None, :],
        )
    tl.store(partial_ptr + p * tl.num_programs(0) + tl.program_id(0), tl.sum(sq_R))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(…, D) as (rows, D) with unit column stride (a view when the input allows it)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


class _MaskedMSE(torch.autograd.Function):
    """Sum over P pairs of each pair's masked mean. Inputs after the settings: P student tensors, then P
    teacher tensors, of one shape; gradients come back as views of one (P, …, D) buffer."""

    @staticmethod
    def forward(ctx, valid, block_cols, n_pairs, *tensors):
        students, teachers = tensors[:n_pairs], tensors[n_pairs:]
        h_s = students[0]
        check_device(_masked_mse_kernel, h_s, "hidden_mse")
        D = h_s.shape[-1]
        (s_table, t_table), aligned = pair_tables([_rows(x) for x in students], [_rows(x) for x in teachers])
        n_rows = s_table.base.shape[0]
        if valid is None:
            mask = None
            count = torch.full((), float(n_rows), device=h_s.device, dtype=torch.float32)
        else:
            mask = valid.reshape(-1).to(device=h_s.device, dtype=torch.int8)
            count = mask.sum(dtype=torch.float32).clamp(min=1)
        block_c = min(triton.next_power_of_2(D), block_cols)
        block_r = max(1, TILE_ELEMENTS // block_c)
        grid = (triton.cdiv(n_rows, block_r), n_pairs)
        grad = torch.empty((n_pairs, n_rows, D), device=h_s.device, dtype=h_s.dtype)
        partial = torch.empty((n_pairs, grid[0]), device=h_s.device, dtype=torch.float32)
        _masked_mse_kernel[grid](
            s_table.base, t_table.base, s_table.offsets, t_table.offsets,
            mask if mask is not None else count, count, grad, partial,
            n_rows, D, s_table.base.stride(0), t_table.base.stride(0), grad.stride(0), grad.stride(1),
            HAS_MASK=mask is not None, ALIGNED=aligned, BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=4,
        )
        ctx.save_for_backward(grad.view(n_pairs, *h_s.shape))
        return partial.sum() / (count * D)

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return None, None, None, *grad.mul_(grad_out.to(grad.dtype)).unbind(0), *[None] * grad.shape[0]


def _check(h_s: torch.Tensor, h_t: torch.Tensor, valid: torch.Tensor | None) -> None:
    if h_s.shape != h_t.shape:
        raise ValueError(f"hidden_mse: student {tuple(h_s.shape)} and teacher {tuple(h_t.shape)} differ (project the student first)")
    if valid is not None and valid.shape != h_s.shape[:-1]:
        raise ValueError(f"hidden_mse: mask {tuple(valid.shape)} does not match the tokens of {tuple(h_s.shape)}")


def hidden_mse_multi(pairs, valid: torch.Tensor | None = None, *, block_cols: int = BLOCK_COLS) -> torch.Tensor:
    """Sum over pairs [(h_s, h_t), ...] of `hidden_mse_reference(h_s, h_t, valid)`, grads to each h_s: pairs
    of one shape, strides and dtypes share one launch. Backward may be called once (the saved gradient
    is scaled in place)."""
    for h_s, h_t in pairs:
        _check(h_s, h_t, valid)
    total = None
    for group in pair_groups([(h_s, h_t.detach()) for h_s, h_t in pairs]):
        students, teachers = zip(*group)
        loss = _MaskedMSE.apply(valid, block_cols, len(group), *students, *teachers)
        total = loss if total is None else total + loss
    return total


def hidden_mse(h_s: torch.Tensor, h_t: torch.Tensor, valid: torch.Tensor | None = None, *, block_cols: int = BLOCK_COLS) -> torch.Tensor:
    """Fused `hidden_mse_reference`: h (…, D) of equal shape, valid (…) bool True = real token; grads to h_s.

    Backward may be called once (the saved gradient is scaled in place).
    """
    return hidden_mse_multi([(h_s, h_t)], valid, block_cols=block_cols)
