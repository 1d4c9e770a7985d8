"""The fused kernels never allocate an L×L score matrix or N×V logits: every tensor created during a
forward and backward pass is recorded (a TorchDispatchMode sees each op's outputs) and its size checked.

Under the interpreter the kernels' tiles live in the interpreter, not in torch tensors; what is
checked is the host code, which is where a whole-matrix buffer would be allocated.
Legend: B batch, H heads, L sequence, D width, N rows, V vocabulary.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before mdist.kernels binds its Triton kernels

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mdist.kernels import attention_score_mse_multi, attention_score_mse_reference, fused_linear_distill_loss, fused_linear_distill_loss_reference
from mdist.kernels import linear_distill


class _Sizes(TorchDispatchMode):
    """Element counts of every tensor an op returns, any dtype (a bool L×L mask counts too), except the
    interpreter's uint8 byte views of kernel arguments (copies to and from its host arrays); views and
the interpreter's re-pointing of tensors (set_) allocate nothing and are not counted."""

    def __init__(self):
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.overloadpacket is not torch.ops.aten.set_:  # views and re-pointing allocate nothing
            self.numels += [t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.dtype != torch.uint8]
        return out


def _largest(fn) -> int:
    """Elements of the largest tensor created by fn() and its backward."""
    with _Sizes() as sizes:
        fn().backward()
    return max(sizes.numels)


def test_attention_score_mse_allocates_no_score_matrix():
    B, H, L, D = 1, 2, 128, 8
    gen = torch.Generator().manual_seed(0)
    q_s, k_s, q_t, k_t = (torch.randn(B, H, L, D, generator=gen) for _ in range(4))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 100:] = False
    leaves = [q_s.requires_grad_(), k_s.requires_grad_()]
    largest = _largest(lambda: attention_score_mse_multi([(*leaves, q_t, k_t), (*leaves, k_t, q_t)], mask))
    assert largest < L * L, f"a tensor of {largest} elements: an L×L ({L * L}) score matrix?"
    # the recorder sees the reference's B·H·L·L scores: the check can fail
    assert _largest(lambda: attention_score_mse_reference(*leaves, q_t, k_t, mask)) >= B * H * L * L


def test_attention_pairs_are_read_in_place():
    """Layer pairs reach the kernel as they are: the only operand-sized tensors the forward pass makes
    are the two gradient buffers (stacking the pairs would add four copies of every Q and K)."""
    B, H, L, D, P = 2, 2, 32, 8, 3
    gen = torch.Generator().manual_seed(1)
    pairs = [
        tuple(torch.randn(B, H, L, D, generator=gen).requires_grad_(i < 2) for i in range(4)) for _ in range(P)
    ]
    with _Sizes() as sizes:
        attention_score_mse_multi(pairs, torch.ones(B, L, dtype=torch.bool))
    operand_sized = [n for n in sizes.numels if n >= B * H * L * D]
    assert operand_sized == [P * B * H * L * D] * 2, operand_sized


def test_linear_distill_holds_one_row_chunk_of_logits(monkeypatch):
    N, V, D = 32, 300, 16
    gen = torch.Generator().manual_seed(0)
    h_s, h_t = (torch.randn(N, D, generator=gen) for _ in range(2))
    w_s, w_t = (0.3 * torch.randn(V, D, generator=gen) for _ in range(2))
    b_s, b_t = (0.1 * torch.randn(V, generator=gen) for _ in range(2))
    labels = torch.randint(0, V, (N,), generator=gen)
    leaves = [x.requires_grad_() for x in (h_s, w_s, b_s)]
    # the default row chunk, from a chunk budget of 16 rows (at real size: 512 MiB, ~1 070 rows of V = 250 002)
    monkeypatch.setattr(linear_distill, "CHUNK_BYTES", 16 * V * 4)
    rows = 16
    largest = _largest(lambda: fused_linear_distill_loss(*leaves, h_t, w_t, b_t, labels, 2.0, 0.5, 0.5))
    assert largest <= rows * linear_distill.padded_stride(V) < N * V, f"a tensor of {largest} elements (N×V = {N * V})"
    # and with the vocabulary split too: one (rows × vocab chunk) buffer per model
    largest = _largest(lambda: fused_linear_distill_loss(*leaves, h_t, w_t, b_t, labels, 2.0, 0.5, 0.5, row_chunk=16, vocab_chunk=150))
    assert largest <= max(V * D, 16 * linear_distill.padded_stride(150)) < N * V, largest  # V×D: the weight gradient itself
    assert _largest(lambda: fused_linear_distill_loss_reference(*leaves, h_t, w_t, b_t, labels, 2.0, 0.5, 0.5)) >= N * V

