"""Every Triton launch the loss ops make at the benchmark's shapes compiles for the H100 (sm_90),
fits its shared memory and spills no registers (see hopper_build.py; no GPU needed).

Legend: B batch, H heads, L sequence, D_s/D_t student/teacher head width, N rows, V vocabulary, D hidden.
"""
import pytest
import torch

pytest.importorskip("triton")
from hopper_build import H100_SHARED_BYTES, build_for_hopper, cuobjdump, recorded_launches  # noqa: E402

import mdist.kernels.attention_mse as attention_mse  # noqa: E402
import mdist.kernels.hidden_state_mse as hidden_state_mse  # noqa: E402
import mdist.kernels.linear_distill as linear_distill  # noqa: E402

pytestmark = pytest.mark.skipif(cuobjdump() is None, reason="this Triton ships no NVIDIA toolchain (ptxas, cuobjdump)")


def _assert_fits_h100(launches, expected_kernels):
    assert launches, "the op launched no kernel"
    builds = build_for_hopper(launches)
    for build in builds:
        assert build.local_bytes == 0, f"{build.kernel} spills registers to local memory: {build}"
        assert build.shared_bytes <= H100_SHARED_BYTES, f"{build.kernel} needs more shared memory than an H100 block has: {build}"
    assert {build.kernel for build in builds} == expected_kernels


@pytest.mark.parametrize(
    "dtype, D_s, D_t",
    [(torch.bfloat16, 64, 64), (torch.bfloat16, 64, 80), (torch.float32, 64, 64)],
    ids=["bf16-base", "bf16-xl-teacher", "fp32"],
)
def test_attention_score_mse_launches_build_for_h100(dtype, D_s, D_t):
    """XLM-R base heads (64 wide) at L = 512 with padding (the GPU's default tiles); an XL teacher's 80-wide heads."""
    B, H, L = 2, 2, 512
    q_s, k_s = (torch.randn(B, H, L, D_s, dtype=dtype, requires_grad=True) for _ in range(2))
    q_t, k_t = (torch.randn(B, H, L, D_t, dtype=dtype) for _ in range(2))
    mask_BL = torch.ones(B, L, dtype=torch.bool)
    mask_BL[0, 300:] = False
    with recorded_launches(attention_mse, "_score_mse_rows_kernel") as launches:
        attention_mse.attention_score_mse(q_s, k_s, q_t, k_t, mask_BL)
    assert len(launches) == 2  # rows = queries (loss and d q_s), rows = keys (d k_s)
    default = attention_mse.BLOCK_ROWS  # fp32 tiles take half the rows (shared memory)
    assert (launches[0].constexprs["BLOCK_R"], launches[0].constexprs["BLOCK_C"]) == (default // 2 if dtype == torch.float32 else default, attention_mse.BLOCK_COLS)
    _assert_fits_h100(launches, {"_score_mse_rows_kernel"})


@pytest.mark.parametrize("misaligned", [False, True])
def test_attention_pairs_read_in_place_keep_vectorised_loads(misaligned):
    """Three layers' Q/K as views of fused Q/K/V products, read through pair tables: the aligned
    offsets keep the tiles' 16-byte loads (without the hint every element is a 2-byte load). A
    tensor one element off 16 bytes turns the hint off: the check can fail."""
    B, H, L, D, P = 2, 2, 512, 64, 3
    qkv = [torch.randn(B, L, 3, H, D, dtype=torch.bfloat16).permute(2, 0, 3, 1, 4) for _ in range(2 * P)]
    if misaligned:
        qkv[-1] = torch.randn(B * L * 3 * H * D + 1, dtype=torch.bfloat16)[1:].view(B, L, 3, H, D).permute(2, 0, 3, 1, 4)
    student = [(q.requires_grad_(), k.requires_grad_()) for q, k in (x.unbind(0)[:2] for x in qkv[:P])]
    pairs = [(*s, *t.unbind(0)[:2]) for s, t in zip(student, qkv[P:])]
    mask_BL = torch.ones(B, L, dtype=torch.bool)
    mask_BL[0, 300:] = False
    with recorded_launches(attention_mse, "_score_mse_rows_kernel") as launches:
        attention_mse.attention_score_mse_multi(pairs, mask_BL)
    assert len(launches) == 2 and launches[0].constexprs["ALIGNED"] is not misaligned
    builds = build_for_hopper(launches)
    assert all((build.wide_loads == 0) == misaligned for build in builds), builds


@pytest.mark.parametrize("T", [2.0, 1.0])  # 1.0: the SAME_T specialisations
def test_fused_linear_distill_launches_build_for_h100(T):
    N, V, D = 40, 20_000, 64  # V over SPLIT_V: several statistics programs per row
    h_s = torch.randn(N, D, dtype=torch.bfloat16, requires_grad=True)
    w_s = torch.randn(V, D, dtype=torch.bfloat16, requires_grad=True)
    b_s = torch.zeros(V, dtype=torch.bfloat16, requires_grad=True)
    h_t, w_t, b_t = torch.randn(N, D, dtype=torch.bfloat16), torch.randn(V, D, dtype=torch.bfloat16), torch.zeros(V, dtype=torch.bfloat16)
    labels = torch.randint(0, V, (N,))
    labels[::3] = -100
    with recorded_launches(linear_distill, "_stats_kernel", "_combine_kernel", "_grad_kernel") as launches:
        linear_distill.fused_linear_distill_loss(h_s, w_s, b_s, h_t, w_t, b_t, labels, T, 1.0, 1.0)
    assert launches[0].constexprs["BLOCK"] == linear_distill.BLOCK_V
    assert launches[0].constexprs["SAME_T"] == (T == 1.0)
    _assert_fits_h100(launches, {"_stats_kernel", "_combine_kernel", "_grad_kernel"})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_hidden_mse_launches_build_for_h100(dtype):
    """XLM-R base width (768: one 1024-column tile, masked) with padding; three layer pairs read in place,
    with 16-byte loads."""
    pairs = [(torch.randn(2, 16, 768, dtype=dtype, requires_grad=True), torch.randn(2, 16, 768, dtype=dtype)) for _ in range(3)]
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 9:] = False
    with recorded_launches(hidden_state_mse, "_masked_mse_kernel") as launches:
        hidden_state_mse.hidden_mse_multi(pairs, valid)
    assert len(launches) == 1 and launches[0].constexprs["BLOCK_C"] == 1024 and launches[0].constexprs["ALIGNED"]
    _assert_fits_h100(launches, {"_masked_mse_kernel"})
    assert build_for_hopper(launches)[0].wide_loads > 0
