"""Tatoeba-style retrieval (METHOD §7): for each query, is its translation the nearest of all candidates?

Queries (the target language) are encoded by one model, English candidates by another (two
monolingual students) or the same one (a multilingual model, the teacher). Every representation of
`layers.representations` is scored with both similarities of `similarity`.
"""
from __future__ import annotations

from pathlib import Path

from mdist.errors import DataError
from mdist.evaluation.encode import TokenStates, encode, load_encoder
from mdist.evaluation.layers import layer_sets, representations
from mdist.evaluation.similarity import Packed, bertscore_f1, default_max_elements, mean_pooled_cosine, retrieval_accuracy
from mdist.evaluation.texts import read_parallel

SCORES = ("cosine", "bertscore")


def retrieval_accuracies(queries: TokenStates, candidates: TokenStates, max_elements: int, progress: bool = False) -> dict:
    """{"cosine": {representation: accuracy}, "bertscore": {...}, "n": pairs, "layer_sets": {set: its layers}};
    line i of each side is a pair. The layer lists make a result readable without the code's numbering."""
    result: dict = {"cosine": {}, "bertscore": {}, "n": len(queries.lengths_N), "layer_sets": layer_sets(queries.num_layers)}
    for name, layers in representations(queries.num_layers).items():
        query_side = Packed(queries.tokens(layers), queries.lengths_N, queries.weights_T)
        candidate_side = Packed(candidates.tokens(layers), candidates.lengths_N, candidates.weights_T)
        result["cosine"][name] = retrieval_accuracy(mean_pooled_cosine(query_side, candidate_side))
        f1_QC = bertscore_f1(query_side, candidate_side, max_elements, f"BERTScore {name}" if progress else None)
        result["bertscore"][name] = retrieval_accuracy(f1_QC)
    return result


def evaluate_retrieval(
    src_model: Path,
    trg_model: Path,
    src_file: Path,
    trg_file: Path,
    batch_size: int = 32,
    max_length: int = 512,
    device: str = "cpu",
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    """Encode queries (`src_file`) with `src_model` and candidates (`trg_file`) with `trg_model`, then score."""
    src_lines, trg_lines = read_parallel(src_file, trg_file, limit)
    query_model, query_tokenizer = load_encoder(src_model, device)
    same = src_model.resolve() == trg_model.resolve()
    candidate_model, candidate_tokenizer = (query_model, query_tokenizer) if same else load_encoder(trg_model, device)
    queries = encode(query_model, query_tokenizer, src_lines, batch_size, max_length)
    candidates = encode(candidate_model, candidate_tokenizer, trg_lines, batch_size, max_length)
    if queries.states_KTD.shape[::2] != candidates.states_KTD.shape[::2]:
        raise DataError(
            f"'{src_model}' has {queries.num_layers} layers of width {queries.states_KTD.shape[2]} but '{trg_model}' has "
            f"{candidates.num_layers} of width {candidates.states_KTD.shape[2]}; layer-wise retrieval needs the same shape"
        )
    return retrieval_accuracies(queries, candidates, default_max_elements(device), progress)
