"""Kernel benchmark: eager reference, `torch.compile`d reference and fused Triton ops, side by side in one process.

Anchors from issue 6 (forward + backward, bf16): attention-score MSE over 6 layer pairs at B=16, H=12,
L=512, D=64 with padding; vocabulary KL+CE at V=250 002, D=768, N=4 915. Also the hidden-state MSE of
MonoShot's 7 pairs (6 mapped layers + embeddings) at batch 64 × 512, D=768, with padding. `--sweep`
adds the fused kernels at other settings, to choose the defaults from a recorded run: attention tile
sizes (rows × columns), the vocabulary op's row chunk and statistics split, the hidden MSE's tile
columns. `--skip REGEX` leaves out variants by name (`--skip compiled` saves the compile time).
Prints a table and appends one row per variant to benchmarks/RESULTS.md. Without CUDA it runs a tiny
interpreter smoke test (no timings).

    python benchmarks/kernels.py [--only attention|vocab|hidden] [--sweep] [--skip REGEX] [--iters 20] [--no-record]

Legend: P layer pairs, B batch, H heads, L sequence, D width, N masked rows, V vocabulary.
"""
from __future__ import annotations

import argparse
import os
import re

import torch

from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

HEADER = ("date (UTC)", "device", "commit", "kernel", "variant", "fwd+bwd ms", "extra peak GiB", "loss")


def attention_case(device, P=6, B=16, H=12, L=512, D=64, seed=0):
    """Student Q/K (leaves, per pair and pre-stacked), teacher Q/K, and a ragged padding mask (lengths L/2..L)."""
    gen = torch.Generator(device).manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16)

    stacked = [rand(P, B, H, L, D) for _ in range(4)]
    lengths_B = torch.randint(L // 2, L + 1, (B,), generator=gen, device=device)
    mask_BL = torch.arange(L, device=device)[None, :] < lengths_B[:, None]
    return stacked, mask_BL


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

    variants = {
        "eager reference": (summed(kernels.hidden_mse_reference), leaves),
        "compiled reference": (torch.compile(summed(kernels.hidden_mse_reference)), leaves),
        "fused (one pass per pair)": (summed(kernels.hidden_mse), leaves),
    }
    for cols in HIDDEN_COLS_SWEEP if sweep else []:
        variants[f"fused, tiles of {cols} columns"] = (summed(kernels.hidden_mse, block_cols=cols), leaves)
    return variants


HIDDEN_COLS_SWEEP = [128, 256, 512]  # block_cols (the default is 1024)
VOCAB_SWEEP = [(1024, 8192), (2048, 8192), (None, 4096), (None, 16384)]  # (row_chunk, split_v); None: the defaults


TILE_SWEEP = [(64, 64), (64, 128), (128, 64), (128, 128), (256, 64)]  # (block_rows, block_cols)


def attention_variants(kernels, stacked, mask_BL, sweep=False):
    """name -> (fn(leaves) -> loss, leaves): student tensors are leaves so backward has real work to do."""
    q_s, k_s, q_t, k_t = stacked
    leaves = [q_s.clone().requires_grad_(), k_s.clone().requires_grad_()]

    def per_pair(fn):
        return lambda qs, ks: sum(fn(qs[p], ks[p], q_t[p], k_t[p], mask_BL) for p in range(qs.shape[0]))

    eager = per_pair(kernels.attention_score_mse_reference)
    gram = per_pair(kernels.attention_score_mse_gram)
    variants = {
        "eager reference": (eager, leaves),
        "compiled reference": (torch.compile(eager), leaves),
        "gram identity, compiled": (torch.compile(gram), leaves),
        "fused per pair (no copy, 2 launches a pair)": (per_pair(kernels.attention_score_mse), leaves),
        "fused multi (stacks pairs)": (
            lambda qs, ks: kernels.attention_score_mse_multi(
                [(qs[p], ks[p], q_t[p], k_t[p]) for p in range(qs.shape[0])], mask_BL
            ),
            leaves,
        ),
        "fused stacked (no copy)": (
            lambda qs, ks: kernels.attention_score_mse_stacked(qs, ks, q_t, k_t, mask_BL),
            leaves,
        ),
    }
    for rows, cols in TILE_SWEEP if sweep else []:
        variants[f"fused stacked, tiles {rows}×{cols}"] = (
            lambda qs, ks, r=rows, c=cols: kernels.attention_score_mse_stacked(qs, ks, q_t, k_t, mask_BL, block_rows=r, block_cols=c),
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


def measure(fn, leaves, iters):
    """Mean fwd+bwd milliseconds over `iters` after warm-up, and peak memory above what was allocated before."""

    def step():
        for x in leaves:
            x.grad = None
        loss = fn(*leaves)
        loss.backward()
        return loss

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

    stacked, mask_BL = attention_case("cpu", P=2, B=2, H=2, L=24, D=16)
    q_s, k_s, q_t, k_t = (x.float() for x in stacked)
    fused = kernels.attention_score_mse_stacked(q_s, k_s, q_t, k_t, mask_BL).item()
    ref = sum(kernels.attention_score_mse_reference(q_s[p], k_s[p], q_t[p], k_t[p], mask_BL) for p in range(2)).item()
    print(f"attention smoke: fused {fused:.6f} reference {ref:.6f}")
    student, teacher, labels = vocab_case("cpu", N=7, V=300, D=16)
    args = [x.float() for x in student + teacher]
    fused = kernels.fused_linear_distill_loss(*args, labels, 2.0, 1.0, 1.0).item()
    ref = kernels.fused_linear_distill_loss_reference(*args, labels, 2.0, 1.0, 1.0).item()
    print(f"vocab smoke:     fused {fused:.6f} reference {ref:.6f}")
    student, teacher, valid_BL = hidden_case("cpu", P=2, B=2, L=24, D=40)
    fused = sum(kernels.hidden_mse(h.float(), t.float(), valid_BL) for h, t in zip(student, teacher)).item()
    ref = sum(kernels.hidden_mse_reference(h.float(), t.float(), valid_BL) for h, t in zip(student, teacher)).item()
    print(f"hidden smoke:    fused {fused:.6f} reference {ref:.6f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["attention", "vocab", "hidden"])
    parser.add_argument("--sweep", action="store_true", help="also time the fused kernels at other tile sizes, row chunks and splits")
    parser.add_argument("--skip", default=None, help="regular expression: variants whose name matches are not run (e.g. 'compiled' to save compile time)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
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
        variants = attention_variants(kernels, *attention_case("cuda"), sweep=args.sweep)
        cases.append(("attention MSE, 6 pairs B16 H12 L512 D64 pad", variants))
    if args.only in (None, "vocab"):
        cases.append(("vocab KL+CE, N4915 V250002 D768", vocab_variants(kernels, *vocab_case("cuda"), sweep=args.sweep)))
    if args.only in (None, "hidden"):
        cases.append(("hidden MSE, 7 pairs B64 L512 D768 pad", hidden_variants(kernels, *hidden_case("cuda"), sweep=args.sweep)))
    stamp, revision = utc_stamp(), git_commit()  # once: other work may commit while the rows run
    print(markdown_header(HEADER))
    rows = []
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
    if not args.no_record:
        append_table(f"Kernels (benchmarks/kernels.py), {stamp}", HEADER, rows)


if __name__ == "__main__":
    main()
