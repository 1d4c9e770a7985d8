"""Several same-shaped tensors read by one kernel launch without stacking them into one buffer.

A kernel gets pair 0's tensor as its typed pointer and a table of element offsets: pair p's tensor
starts `offsets[p]` elements after pair 0's (any allocation: the GPU's address space is flat, and
every allocation is aligned to its element size, so the byte distance divides exactly). The pairs
share shape, strides and dtype, so one set of strides addresses them all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

VECTOR_BYTES = 16  # the widest load a thread issues; aligned tables let the compiler use it


def pair_groups(pairs: list[tuple[torch.Tensor, ...]]) -> list[list[tuple[torch.Tensor, ...]]]:
    """`pairs` grouped by the shape, strides and dtype of each of their tensors: a group is what one
    set of launches (one table per position in the pair) can read."""
    groups: dict[tuple, list] = {}
    for pair in pairs:
        groups.setdefault(tuple((x.shape, x.stride(), x.dtype) for x in pair), []).append(pair)
    return list(groups.values())


@dataclass(frozen=True)
class PairTable:
    base: torch.Tensor  # pair 0's tensor: the kernel's pointer argument (its dtype types the loads)
    offsets: torch.Tensor  # (P,) int64 on base's device


def pair_tables(*operands: list[torch.Tensor]) -> tuple[list[PairTable], bool]:
    """One table per operand (each a list of P tensors of one shape, strides and dtype), in one host→device
    copy; and whether every tensor starts on a VECTOR_BYTES boundary (the kernels' ALIGNED hint)."""
    rows = []
    for tensors in operands:
        base = tensors[0]
        for x in tensors[1:]:
            if (x.shape, x.stride(), x.dtype, x.device) != (base.shape, base.stride(), base.dtype, base.device):
                raise ValueError(
                    f"pair_tables: every pair needs one shape, strides, dtype and device, got {tuple(base.shape)} {base.stride()} "
                    f"{base.dtype} {base.device} and {tuple(x.shape)} {x.stride()} {x.dtype} {x.device}"
                )
        rows.append([(x.data_ptr() - base.data_ptr()) // base.element_size() for x in tensors])
    table = torch.tensor(rows, dtype=torch.int64)
    device = operands[0][0].device
    if device.type == "cuda":  # pinned and asynchronous: building the table never waits for the GPU
        table = table.pin_memory().to(device, non_blocking=True)
    aligned = all(x.data_ptr() % VECTOR_BYTES == 0 for tensors in operands for x in tensors)
    return [PairTable(tensors[0], table[i]) for i, tensors in enumerate(operands)], aligned


@triton.jit
def pair_base(ptr, offsets_ptr, p, ALIGNED: tl.constexpr):
    """Pointer to pair p's tensor: pair 0's `ptr` moved by the table's offset (ALIGNED: the offset is a
    whole number of VECTOR_BYTES, so loads from it can be vectorised)."""
    offset = tl.load(offsets_ptr + p)
    if ALIGNED:
        offset = tl.multiple_of(offset, 128 // ptr.dtype.element_ty.primitive_bitwidth)  # VECTOR_BYTES, in elements
    return ptr + offset
