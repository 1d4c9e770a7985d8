"""All-pairs sentence similarity: cosine of mean-pooled token vectors, and BERTScore F1.

BERTScore is the greedy matching of `bert_score.utils.greedy_cos_idf` with idf off: token vectors
are unit-normalised; each token of one sentence takes its most similar token of the other (any real
token, <s> and </s> included); each side averages those best similarities with weight 0 for <s> and
</s> and equal weight for every other token (P and R); F1 = 2PR / (P + R), and 0 where that is
undefined. One difference, on purpose: the package multiplies padded similarities by 0 before the
max, so for a token whose cosines are all negative its score depends on how its batch was padded;
here the max runs over real tokens only, which is the package's answer for a pair scored alone
(`bert_score.score(..., batch_size=1)`; tests check this per layer).

All pairs are scored with one matmul per pair of blocks: each side is sorted by length and cut into
blocks of at most BLOCK_SENTENCES sentences (so a block is padded to about its own length, not the
longest sentence's) and few enough tokens that the [q, Lq, c, Lc] similarity tensor of a pair of
blocks stays under `max_elements` floats.

Legend: Q queries, C candidates, N sentences of one side, T tokens of one side packed, L padded
length, D width, E = D + 2 (see `_pad`); lower-case q, c: sentences in a block.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

BELOW_ANY_COSINE = -2.0
BLOCK_SENTENCES = 256


class Packed(NamedTuple):
    """One representation of N sentences, tokens packed in sentence order."""

    vectors_TD: torch.Tensor
    lengths_N: torch.Tensor
    weights_T: torch.Tensor


def default_max_elements(device: torch.device | str) -> int:
    """Similarity floats per block: 4 GiB on a GPU (a few big matmuls), 256 MiB on the CPU."""
    return 2**30 if torch.device(device).type == "cuda" else 2**26


def mean_pooled_cosine(queries: Packed, candidates: Packed) -> torch.Tensor:
    """[Q, C] cosine of sentence vectors, each the mean over all its tokens (special ones included)."""
    return _mean_pool(queries) @ _mean_pool(candidates).T


def _mean_pool(side: Packed) -> torch.Tensor:
    n = len(side.lengths_N)
    sentence_T = torch.repeat_interleave(torch.arange(n, device=side.lengths_N.device), side.lengths_N)
    sums_ND = torch.zeros(n, side.vectors_TD.shape[1], dtype=side.vectors_TD.dtype, device=side.vectors_TD.device)
    sums_ND.index_add_(0, sentence_T, side.vectors_TD)
    return F.normalize(sums_ND / side.lengths_N[:, None], dim=-1)


def retrieval_accuracy(scores_QC: torch.Tensor) -> float:
    """Fraction of queries i whose best-scoring candidate is candidate i."""
    hits = scores_QC.argmax(dim=1) == torch.arange(len(scores_QC), device=scores_QC.device)
    return hits.sum().item() / len(scores_QC)


def bertscore_f1(queries: Packed, candidates: Packed, max_elements: int, progress: str | None = None) -> torch.Tensor:
    """[Q, C] BERTScore F1 of every query against every candidate, in bounded memory; `progress` titles a progress bar."""
    queries, candidates = _unit(queries), _unit(candidates)
    q_order, c_order = queries.lengths_N.argsort(), candidates.lengths_N.argsort()
    c_spans = _spans(candidates.lengths_N[c_order].tolist(), max_elements // 1024)
    width = candidates.vectors_TD.shape[1]
    c_blocks = [(c_order[s:e], *_pad(candidates, c_order[s:e], own=width + 1)) for s, e in c_spans]
    c_block_tokens = max(block.shape[0] * block.shape[1] for _, block, _ in c_blocks)
    q_spans = _spans(queries.lengths_N[q_order].tolist(), max_elements // c_block_tokens)
    f1_QC = torch.empty(len(queries.lengths_N), len(candidates.lengths_N), device=queries.vectors_TD.device)
    with tqdm(total=len(q_spans) * len(c_blocks), desc=progress, disable=progress is None, leave=False) as bar:
        for s, e in q_spans:
            q_index = q_order[s:e]
            q_vectors, q_weights = _pad(queries, q_index, own=width)
            for c_index, c_vectors, c_weights in c_blocks:
                f1_QC[q_index[:, None], c_index] = _block_f1(q_vectors, q_weights, c_vectors, c_weights)
                bar.update()
    return f1_QC


def _block_f1(q_vectors_qLE: torch.Tensor, q_weights_qL: torch.Tensor, c_vectors_cLE: torch.Tensor, c_weights_cL: torch.Tensor) -> torch.Tensor:
    q, lq, e = q_vectors_qLE.shape
    c, lc, _ = c_vectors_cLE.shape
    sim_qLcL = (q_vectors_qLE.reshape(q * lq, e) @ c_vectors_cLE.reshape(c * lc, e).T).view(q, lq, c, lc)
    query_side_qc = torch.einsum("qlc,ql->qc", sim_qLcL.amax(dim=3), q_weights_qL)
    candidate_side_qc = torch.einsum("qcm,cm->qc", sim_qLcL.amax(dim=1), c_weights_cL)
    f1_qc = 2 * query_side_qc * candidate_side_qc / (query_side_qc + candidate_side_qc)
    return f1_qc.nan_to_num(0.0)


def _unit(side: Packed) -> Packed:
    return side._replace(vectors_TD=F.normalize(side.vectors_TD, dim=-1))


def _spans(sorted_lengths: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """Cut length-sorted sentences into runs of <= BLOCK_SENTENCES whose padded size (count x longest) is <= max_tokens."""
    spans, start = [], 0
    for i, length in enumerate(sorted_lengths):
        if i > start and ((i + 1 - start) * length > max_tokens or i - start == BLOCK_SENTENCES):
            spans.append((start, i))
            start = i
    spans.append((start, len(sorted_lengths)))
    return spans


def _pad(side: Packed, index_n: torch.Tensor, own: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded [n, L, D + 2] vectors and [n, L] weights (summing to 1) of sentences `index_n`.

    The two extra columns do the padding mask inside the matmul: a real token has 1 in its side's
    column `own` (D for queries, D + 1 for candidates), a padding token -2 in the other side's
    column. A real-real product is the cosine; any product of a real token with padding is -2,
    below every cosine, so no max picks padding; padding-padding products get weight 0.
    """
    offsets_N = side.lengths_N.cumsum(0) - side.lengths_N
    lengths_n = side.lengths_N[index_n]
    position_L = torch.arange(int(lengths_n.max()), device=lengths_n.device)
    real_nL = position_L < lengths_n[:, None]
    token_nL = (offsets_N[index_n, None] + position_L).clamp(max=len(side.weights_T) - 1)
    n, length, d = *real_nL.shape, side.vectors_TD.shape[1]
    vectors_nLE = torch.zeros(n, length, d + 2, dtype=side.vectors_TD.dtype, device=side.vectors_TD.device)
    vectors_nLE[..., :d] = side.vectors_TD[token_nL] * real_nL[..., None]
    vectors_nLE[..., own] = real_nL.to(vectors_nLE.dtype)
    vectors_nLE[..., 2 * d + 1 - own] = BELOW_ANY_COSINE * (~real_nL).to(vectors_nLE.dtype)
    weights_nL = side.weights_T[token_nL] * real_nL
    return vectors_nLE, weights_nL / weights_nL.sum(dim=1, keepdim=True)
