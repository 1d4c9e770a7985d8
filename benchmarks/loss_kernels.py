"""Kernel benchmark: eager reference, `torch.compile`d reference and fused Triton ops, side by side in one process.

Anchors from issue 6 (forward + backward, bf16): attention-score MSE over 6 layer pairs at B=16, H=12,
L=512, D=64 with padding; vocabulary KL+CE at V=250 002, D=768, N=4 915. Also the hidden-state MSE of
MonoShot's 7 pairs (6 mapped layers + embeddings) at batch 64 × 512, D=768, with padding. `--sweep`
adds the fused kernels at other settings, to choose the defaults from a recorded run: attention tile
sizes (rows × columns), the vocabulary op's row chunk and statistics split, the hidden MSE's tile
columns. `--skip REGEX` leaves out variants by name (`--skip compiled` saves the compile time);
`--profile REGEX` prints the largest kernels of the variants it names (one forward + backward).
Prints a table and appends one row per variant to benchmarks/RESULTS.md. Without CUDA it runs a tiny
interpreter smoke test (no timings).

    python benchmarks/loss_kernels.py [--only attention|vocab|hidden] [--sweep] [--skip REGEX] [--profile REGEX] [--iters 20] [--no-record]

Legend: P layer pairs, B batch, H heads, L sequence, D width, N masked rows, V vocabulary.
"""
from __future__ import annotations

import argparse
import os
import re
from functools import partial

import torch

from profiling import HEADER as PROFILE_HEADER, kernel_times, print_largest
from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

PROFILE_KERNELS = 12  # --profile lists this many of a variant's largest kernels
HEADER = ("date (UTC)", "device", "commit", "kernel", "variant", "fwd+bwd ms", "extra peak GiB", "loss")


def attention_case(device, P=6, B=16, H=12, L=512, D=64, seed=0, layout="contiguous"):
    """Per pair: student and teacher Q/K, each (B, H, L, D), and a ragged padding mask (lengths L/2..L).
    layout "qkv": the views the fused encoder layer hands over (of one (B, L, 3, H, D) product per layer)."""
    gen = torch.Generator(device).manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16)

    if layout == "qkv":
        per_layer = [rand(B, L, 3, H, D).permute(2, 0, 3, 1, 4) for _ in range(2 * P)]
        q_s, k_s, q_t, k_t = ([x[i] for x in per_layer[side * P : (side + 1) * P]] for side in (0, 1) for i in (0, 1))
    else:
        q_s, k_s, q_t, k_t = ([rand(B, H, L, D) for _ in range(P)] for _ in range(4))
    lengths_B = torch.randint(L // 2, L + 1, (B,), generator=gen, device=device)
    mask_BL = torch.arange(L, device=device)[None, :] < lengths_B[:, None]
    return (q_s, k_s, q_t, k_t), mask_BL


def vocab_case(device, N=4915, V=250002, D=768, seed=0):
    gen = torch.Generator(device).manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, device=device)).to(torch.bfloat16)

    student = [rand(N, D), rand(V, D, scale=0.02), rand(V, scale=0.02)]
    teacher = [rand(N, D), rand(V, D, scale=0.02), rand(V, scale=0.02)]
    labels = torch.randint(0, V, (N,), generator=gen, device=device)
    return student, teacher, labels


def hidden_case(device, P=7, B=64, L=512, D=768, seed=0):
    """P student/teacher hidden-state pairs (bf16) and a ragged padding mask (lengths L/2..L)."""
    gen = torch.Generator(device).manual_seed(seed)
    student, teacher = ([torch.randn(B, L, D, generator=gen, device=device).to(torch.bfloat16) for _ in range(P)] for _ in range(2))
    lengths_B = torch.randint(L // 2, L + 1, (B,), generator=gen, device=device)
    return student, teacher, torch.arange(L, device=device)[None, :] < lengths_B[:, None]


def hidden_variants(kernels, student, teacher, valid_BL, sweep=False):
    leaves = [x.clone().requires_grad_() for x in student]

    def summed(fn, **kw):
        return lambda *hs: sum(fn(h, t, valid_BL, **kw) for h, t in zip(hs, teacher))

    def multi(**kw):
        return lambda *hs: kernels.hidden_mse_multi(list(zip(hs, teacher)), valid_BL, **kw)

    variants = {
        "eager reference": (summed(kernels.hidden_mse_reference), leaves),
        "compiled reference": (torch.compile(summed(kernels.hidden_mse_reference)), leaves),
        "fused, one call per pair": (summed(kernels.hidden_mse), leaves),
        "fused multi (one launch for all pairs)": (multi(), leaves),
    }
    for cols in HIDDEN_COLS_SWEEP if sweep else []:
        variants[f"fused multi, tiles of {cols} columns"] = (multi(block_cols=cols), leaves)
    return variants


HIDDEN_COLS_SWEEP = [128, 256, 512]  # block_cols (the default is 1024)
VOCAB_SWEEP = [(1024, 8192), (2048, 8192), (None, 4096), (None, 16384)]  # (row_chunk, split_v); None: the defaults


TILE_SWEEP = [(64, 64), (64, 128), (128, 64), (128, 128), (256, 64)]  # (block_rows, block_cols)


def attention_variants(kernels, per_pair_qk, mask_BL, qkv_views=None, sweep=False):
    """name -> (fn(*leaves) -> loss, leaves): the student's Q and K of each pair are leaves (2P of them), so
    backward has real work to do; qkv_views: the same sizes as the fused encoder's strided views."""
    q_s, k_s, q_t, k_t = per_pair_qk
    P = len(q_s)
    leaves = [x.clone().requires_grad_() for x in (*q_s, *k_s)]

    def pairs(students, teacher_q=q_t, teacher_k=k_t):
        return [(students[p], students[P + p], teacher_q[p], teacher_k[p]) for p in range(P)]

    def per_pair(fn):
        return lambda *s: sum(fn(*pair, mask_BL) for pair in pairs(s))

    def stacking_copy(*s):  # the path before pair tables: every pair copied into (P, B, H, L, D) buffers
        stacked = [torch.stack(xs) for xs in zip(*pairs(s))]
        return kernels.attention_score_mse_multi(list(zip(*(x.unbind(0) for x in stacked))), mask_BL)

    eager = per_pair(kernels.attention_score_mse_reference)
    variants = {
        "eager reference": (eager, leaves),
        "compiled reference": (torch.compile(eager), leaves),
        "gram identity, compiled": (torch.compile(per_pair(kernels.attention_score_mse_gram)), leaves),
        "fused per pair (2 launches a pair)": (per_pair(kernels.attention_score_mse), leaves),
        "fused multi after a stacking copy": (stacking_copy, leaves),
        "fused multi (pairs read in place)": (lambda *s: kernels.attention_score_mse_multi(pairs(s), mask_BL), leaves),
    }
    if qkv_views is not None:
        vq_s, vk_s, vq_t, vk_t = qkv_views
        view_leaves = [x.detach().requires_grad_() for x in (*vq_s, *vk_s)]  # still strided views of the products
        variants["fused multi, Q/K/V-product views read in place"] = (
            lambda *s: kernels.attention_score_mse_multi(pairs(s, vq_t, vk_t), mask_BL), view_leaves
        )
    for rows, cols in TILE_SWEEP if sweep else []:
        variants[f"fused multi, tiles {rows}×{cols}"] = (
            lambda *s, r=rows, c=cols: kernels.attention_score_mse_multi(pairs(s), mask_BL, block_rows=r, block_cols=c),
            leaves,
        )
    return variants


def vocab_variants(kernels, student, teacher, labels, T=2.0, sweep=False):
    leaves = [x.clone().requires_grad_() for x in student]

    def with_ref(fn, **kw):
        return lambda h, w, b: fn(h, w, b, *teacher, labels, T, 1.0, 1.0, **kw)

    variants = {
        "eager reference": (with_ref(kernels.fused_linear_distill_loss_reference), leaves),
        "compiled reference": (torch.compile(with_ref(kernels.fused_linear_distill_loss_reference)), leaves),
        "fused, whole-vocab chunks": (with_ref(kernels.fused_linear_distill_loss), leaves),
        "fused, whole-vocab chunks, T=1": (lambda h, w, b: kernels.fused_linear_distill_loss(h, w, b, *teacher, labels, 1.0, 1.0, 1.0), leaves),
        "fused, vocab_chunk=32768": (with_ref(kernels.fused_linear_distill_loss, vocab_chunk=32768), leaves),
    }
    for rows, split in VOCAB_SWEEP if sweep else []:
        kw = {k: v for k, v in (("row_chunk", rows), ("split_v", split)) if v is not None}
        variants[f"fused, whole-vocab chunks, {', '.join(f'{k}={v}' for k, v in kw.items())}"] = (with_ref(kernels.fused_linear_distill_loss, **kw), leaves)
    return variants


def forward_backward(fn, leaves):
    for x in leaves:
        x.grad = None
    loss = fn(*leaves)
    loss.backward()
    return loss


def measure(fn, leaves, iters):
    """Mean fwd+bwd milliseconds over `iters` after warm-up, and peak memory above what was allocated before."""
    step = partial(forward_backward, fn, leaves)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    for x in leaves:
        x.grad = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = step()
    torch.cuda.synchronize()
    extra_gib = (torch.cuda.max_memory_allocated() - base) / 2**30
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters, extra_gib, loss.item()


def smoke():
    """CPU interpreter check that the fused ops run and agree with the references at toy sizes."""
    from mdist import kernels

    per_pair_qk, mask_BL = attention_case("cpu", P=2, B=2, H=2, L=24, D=16, layout="qkv")
    pairs = [tuple(x.float() for x in pair) for pair in zip(*per_pair_qk)]
    fused = kernels.attention_score_mse_multi(pairs, mask_BL).item()
    ref = sum(kernels.attention_score_mse_reference(*pair, mask_BL) for pair in pairs).item()
    print(f"attention smoke: fused {fused:.6f} reference {ref:.6f}")
    student, teacher, labels = vocab_case("cpu", N=7, V=300, D=16)
    args = [x.float() for x in student + teacher]
    fused = kernels.fused_linear_distill_loss(*args, labels, 2.0, 1.0, 1.0).item()
    ref = kernels.fused_linear_distill_loss_reference(*args, labels, 2.0, 1.0, 1.0).item()
    print(f"vocab smoke:     fused {fused:.6f} reference {ref:.6f}")
    student, teacher, valid_BL = hidden_case("cpu", P=2, B=2, L=24, D=40)
    fused = kernels.hidden_mse_multi([(h.float(), t.float()) for h, t in zip(student, teacher)], valid_BL).item()
    ref = sum(kernels.hidden_mse_reference(h.float(), t.float(), valid_BL) for h, t in zip(student, teacher)).item()
    print(f"hidden smoke:    fused {fused:.6f} reference {ref:.6f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["attention", "vocab", "hidden"])
    parser.add_argument("--sweep", action="store_true", help="also time the fused kernels at other tile sizes, row chunks and splits")
    parser.add_argument("--skip", default=None, help="regular expression: variants whose name matches are not run (e.g. 'compiled' to save compile time)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--profile", default=None, help="regular expression: variants whose name matches also print their largest kernels (one fwd+bwd)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before mdist.kernels binds its kernels
        smoke()
        print("kernel timings need a CUDA GPU; ran the CPU interpreter smoke test only, nothing recorded")
        return
    from mdist import kernels

    device = device_name()
    cases = []
    if args.only in (None, "attention"):
        qkv_views = attention_case("cuda", layout="qkv")[0]
        variants = attention_variants(kernels, *attention_case("cuda"), qkv_views=qkv_views, sweep=args.sweep)
        cases.append(("attention MSE, 6 pairs B16 H12 L512 D64 pad", variants))
    if args.only in (None, "vocab"):
        cases.append(("vocab KL+CE, N4915 V250002 D768", vocab_variants(kernels, *vocab_case("cuda"), sweep=args.sweep)))
    if args.only in (None, "hidden"):
        cases.append(("hidden MSE, 7 pairs B64 L512 D768 pad", hidden_variants(kernels, *hidden_case("cuda"), sweep=args.sweep)))
    stamp, revision = utc_stamp(), git_commit()  # once: other work may commit while the rows run
    print(markdown_header(HEADER))
    rows, profile_rows = [], []
    for kernel, variants in cases:
        for name, (fn, leaves) in variants.items():
            if args.skip and re.search(args.skip, name):
                continue
            try:
                ms, gib, loss = measure(fn, leaves, args.iters)
                row = [stamp, device, revision, kernel, name, f"{ms:.2f}", f"{gib:.2f}", f"{loss:.6g}"]
            except torch.OutOfMemoryError:
                row = [stamp, device, revision, kernel, name, "OOM", "OOM", ""]
                torch.cuda.empty_cache()
            print(markdown_row(row), flush=True)
            rows.append(row)
            if args.profile and re.search(args.profile, name):
                largest = print_largest(kernel_times(lambda: forward_backward(fn, leaves), cuda=True), PROFILE_KERNELS, f"kernels of {kernel}, {name}")
                profile_rows += [[stamp, device, revision, f"{kernel}: {name}", *cells] for cells in largest]
    if not args.no_record:
        append_table(f"Kernels (benchmarks/loss_kernels.py), {stamp}", HEADER, rows)
        if profile_rows:
            append_table(f"Kernel profiles (benchmarks/loss_kernels.py --profile), {stamp}, one forward + backward", PROFILE_HEADER, profile_rows)


if __name__ == "__main__":
    main()
