"""All-pairs BERTScore for retrieval: time per representation for N x N sentences.

Token vectors are random (the matching cost does not depend on their values) with XLM-R base
width 768 and Tatoeba-like lengths (6..40 tokens incl. <s> </s>). A full `mdist eval retrieval`
of a 12-layer model scores 13 single layers + 5 layer sets = 18 representations.
GPU: N = 1000 by default; CPU: N = 300 (the cost grows with N^2), stated in the row.

    python benchmarks/retrieval.py [--n N] [--width D] [--repeats R]
"""
from __future__ import annotations

import argparse
import time

import torch

from mdist.evaluation.similarity import Packed, bertscore_f1, default_max_elements, mean_pooled_cosine
from recording import append_table, device_name, git_commit, utc_stamp

HEADER = ("date (UTC)", "device", "commit", "sentences", "width", "mean length", "BERTScore s / representation", "M pairs/s", "18 representations s")
REPRESENTATIONS_XLMR_BASE = 18


def sentences(n: int, width: int, device: str, seed: int) -> Packed:
    g = torch.Generator().manual_seed(seed)
    lengths_N = torch.randint(6, 41, (n,), generator=g)
    vectors_TD = torch.randn(int(lengths_N.sum()), width, generator=g)
    weights_T = torch.ones(len(vectors_TD))
    ends_N = lengths_N.cumsum(0)
    weights_T[ends_N - 1] = 0
    weights_T[ends_N - lengths_N] = 0
    return Packed(vectors_TD.to(device), lengths_N.to(device), weights_T.to(device))


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--n", type=int, default=1000 if device == "cuda" else 300)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    queries, candidates = sentences(args.n, args.width, device, 0), sentences(args.n, args.width, device, 1)
    max_elements = default_max_elements(device)
    bert_s = timed(lambda: bertscore_f1(queries, candidates, max_elements), device, args.repeats)
    cosine_s = timed(lambda: mean_pooled_cosine(queries, candidates), device, args.repeats)
    name = device_name(device)
    full_s = REPRESENTATIONS_XLMR_BASE * (bert_s + cosine_s)
    rows = [
        ("device", name),
        ("sentences", f"{args.n} x {args.n}, width {args.width}, mean length {float(queries.lengths_N.float().mean()):.1f}"),
        ("BERTScore all pairs, one representation", f"{bert_s:.3f} s ({args.n**2 / bert_s / 1e6:.2f} M pairs/s)"),
        ("cosine all pairs, one representation", f"{cosine_s * 1e3:.1f} ms"),
        (f"scoring of a 12-layer model ({REPRESENTATIONS_XLMR_BASE} representations)", f"{full_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.no_record:
        return
    stamp = utc_stamp()
    mean_length = float(queries.lengths_N.float().mean())
    row = [stamp, name, git_commit(), f"{args.n} x {args.n}", args.width, f"{mean_length:.1f}", f"{bert_s:.3f}", f"{args.n**2 / bert_s / 1e6:.2f}", f"{full_s:.1f}"]
    path = append_table(f"Retrieval, all-pairs BERTScore (benchmarks/retrieval.py), {stamp}", HEADER, [row])
    print(f"appended a row to {path}")


if __name__ == "__main__":
    main()
