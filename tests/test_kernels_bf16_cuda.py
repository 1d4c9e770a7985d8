"""The fused kernels' bf16 path on a CUDA GPU, against float64 and against plain PyTorch in bf16.

Under `TRITON_INTERPRET=1` (CI, CPU) the interpreter upcasts bf16 to fp32 inside the kernels, so the
bf16 tests of test_kernels_*.py there check the dtypes and the host code, not bf16 arithmetic:
the bf16 path of the kernels never runs in CI. These tests run it where CUDA is present (skipped
elsewhere). Tolerances are dtype-aware: the kernel may be off float64 by at most twice what the
PyTorch reference computed from the same bf16 inputs (`loss.kernels: torch` in a bf16 run) is off,
plus a small absolute term: |kernel − ref64| ≤ 2·|torch-bf16 − ref64| + atol.

Legend: B batch, H heads, L sequence, D width, N rows, V vocabulary.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 kernel arithmetic needs a CUDA GPU (the interpreter upcasts to fp32)")


def _loss_and_grads(fn, leaves, rest, **kw):
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    loss = fn(*leaves, *rest, **kw)
    loss.backward()
    return loss.detach().double(), [x.grad.double() for x in leaves]


def _assert_within_torch_bf16_error(fn, ref, leaves, rest, atol, **kw):
    """Kernel (bf16 in) vs reference in float64 and in bf16 on the same rounded inputs: loss and gradients."""
    got = _loss_and_grads(fn, leaves, rest, **kw)
    torch_bf16 = _loss_and_grads(ref, leaves, rest)
    exact = _loss_and_grads(ref, [x.double() for x in leaves], [x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in rest])
    assert abs(got[0] - exact[0]) <= 2 * abs(torch_bf16[0] - exact[0]) + atol * abs(exact[0]), (got[0], torch_bf16[0], exact[0])
    for g, t, e in zip(got[1], torch_bf16[1], exact[1]):
        assert (g - e).norm() <= 2 * (t - e).norm() + atol * e.norm(), ((g - e).norm(), (t - e).norm(), e.norm())


def test_attention_score_mse_bf16():
    from mdist.kernels import attention_score_mse, attention_score_mse_reference

    gen = torch.Generator(device="cuda").manual_seed(0)
    q_s, k_s, q_t, k_t = (torch.randn(2, 4, 200, 64, generator=gen, device="cuda").bfloat16() for _ in range(4))
    mask = torch.ones(2, 200, dtype=torch.bool, device="cuda")
    mask[0, 150:] = False
    _assert_within_torch_bf16_error(attention_score_mse, attention_score_mse_reference, [q_s, k_s], [q_t, k_t, mask], atol=1e-3)


def test_attention_score_mse_multi_bf16():
    """Three layer pairs as the encoder hands them over (transposed views, not stacked)."""
    from mdist.kernels import attention_score_mse_multi, attention_score_mse_reference

    gen = torch.Generator(device="cuda").manual_seed(3)
    B, H, L, D = 2, 4, 160, 64
    views = [torch.randn(B, L, H, D, generator=gen, device="cuda").bfloat16().transpose(1, 2) for _ in range(12)]
    mask = torch.ones(B, L, dtype=torch.bool, device="cuda")
    mask[1, 100:] = False

    def pairs(args):  # 6 student tensors, 6 teacher tensors, the mask
        return [(args[2 * p], args[2 * p + 1], args[6 + 2 * p], args[7 + 2 * p]) for p in range(3)], args[12]

    def multi(*args):
        qk, mask_BL = pairs(args)
        return attention_score_mse_multi(qk, mask_BL)

    def reference(*args):
        qk, mask_BL = pairs(args)
        return sum(attention_score_mse_reference(*pair, mask_BL) for pair in qk)

    _assert_within_torch_bf16_error(multi, reference, views[:6], [*views[6:], mask], atol=1e-3)


def test_hidden_mse_bf16():
    from mdist.kernels import hidden_mse, hidden_mse_reference

    gen = torch.Generator(device="cuda").manual_seed(1)
    h_s, h_t = (torch.randn(4, 100, 768, generator=gen, device="cuda").bfloat16() for _ in range(2))
    valid = torch.ones(4, 100, dtype=torch.bool, device="cuda")
    valid[1, 60:] = False
    _assert_within_torch_bf16_error(hidden_mse, hidden_mse_reference, [h_s], [h_t, valid], atol=1e-3)


def test_hidden_mse_multi_bf16():
    """Four layer pairs in one launch, as a strategy hands them over, one a strided view."""
    from mdist.kernels import hidden_mse_multi, hidden_mse_reference

    gen = torch.Generator(device="cuda").manual_seed(2)
    wide = torch.randn(4, 100, 2 * 768, generator=gen, device="cuda").bfloat16()
    tensors = [torch.randn(4, 100, 768, generator=gen, device="cuda").bfloat16() for _ in range(7)]
    valid = torch.ones(4, 100, dtype=torch.bool, device="cuda")
    valid[2, 30:] = False

    def pairs(args):  # 3 students and the wide buffer, 4 teachers, the mask
        students = [*args[:3], args[3][..., :768]]
        return list(zip(students, args[4:8])), args[8]

    def multi(*args):
        ps, valid_BL = pairs(args)
        return hidden_mse_multi(ps, valid_BL)

    def reference(*args):
        ps, valid_BL = pairs(args)
        return sum(hidden_mse_reference(h_s, h_t, valid_BL) for h_s, h_t in ps)

    _assert_within_torch_bf16_error(multi, reference, [*tensors[:3], wide], [*tensors[3:], valid], atol=1e-3)


@pytest.mark.parametrize("T", [2.0, 1.0])  # 1.0: the student's two softmaxes computed once
@pytest.mark.parametrize("vocab_chunk", [None, 3000])  # V = 10 003: two statistics splits per row, then four chunks
def test_fused_linear_distill_bf16(vocab_chunk, T):
    from mdist.kernels import fused_linear_distill_loss, fused_linear_distill_loss_reference

    gen = torch.Generator(device="cuda").manual_seed(2)
    N, V, D = 300, 10_003, 256
    h_s, h_t = (torch.randn(N, D, generator=gen, device="cuda").bfloat16() for _ in range(2))
    w_s, w_t = ((0.05 * torch.randn(V, D, generator=gen, device="cuda")).bfloat16() for _ in range(2))
    b_s, b_t = ((0.1 * torch.randn(V, generator=gen, device="cuda")).bfloat16() for _ in range(2))
    labels = torch.randint(0, V, (N,), generator=gen, device="cuda")
    labels[::7] = -100
    scalars = [labels, T, 0.5, 0.5]
    _assert_within_torch_bf16_error(
        fused_linear_distill_loss, fused_linear_distill_loss_reference, [h_s, w_s, b_s], [h_t, w_t, b_t, *scalars], atol=1e-3,
        **({} if vocab_chunk is None else {"vocab_chunk": vocab_chunk}),
    )
