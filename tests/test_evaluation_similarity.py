"""Batched all-pairs cosine / BERTScore against a slow float64 loop and against bert_score.score."""
from __future__ import annotations

import random

import pytest
import torch
from bert_score import score as bert_score
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

from mdist.evaluation.encode import encode, load_encoder
from mdist.evaluation.layers import representations
from mdist.evaluation.retrieval import retrieval_accuracies
from mdist.evaluation.similarity import Packed, bertscore_f1, mean_pooled_cosine
from mdist.tokenizer import train_xlmr_tokenizer

WORDS = "the a cat dog sees likes small big red old house tree runs sleeps near under with and".split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    tokenizer = train_xlmr_tokenizer(sentences(300, 0), vocab_size=60, out_dir=out, model_max_length=38)  # bert_score.score truncates to it
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=5, num_attention_heads=2, intermediate_size=32, max_position_embeddings=40, initializer_range=0.3)
    XLMRobertaForMaskedLM(config).save_pretrained(out)
    return out


def reference_states(model, tokenizer, text: str) -> tuple[torch.Tensor, list[int]]:
    """[K, L, D] hidden states of one sentence run alone (no padding, no batching), as float64, and its ids."""
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    return torch.stack(hidden)[:, 0].double(), ids


def reference_cosine(a_LD: torch.Tensor, b_LD: torch.Tensor) -> float:
    a, b = a_LD.mean(0), b_LD.mean(0)
    return float(a @ b / (a.norm() * b.norm()))


def reference_bertscore(a_LD, a_ids, b_LD, b_ids, special) -> float:
    """Zhang et al.: every token's best cosine in the other sentence, averaged over non-special tokens."""
    sim = ((a_LD / a_LD.norm(dim=1, keepdim=True)) @ (b_LD / b_LD.norm(dim=1, keepdim=True)).T).tolist()
    a_best = [max(row) for row in sim]
    b_best = [max(sim[i][j] for i in range(len(a_LD))) for j in range(len(b_LD))]
    a_keep = [i for i, t in enumerate(a_ids) if t not in special]
    b_keep = [j for j, t in enumerate(b_ids) if t not in special]
    p = sum(a_best[i] for i in a_keep) / len(a_keep)
    r = sum(b_best[j] for j in b_keep) / len(b_keep)
    return 2 * p * r / (p + r)


@pytest.fixture(scope="module")
def scored(tiny_dir):
    """Batched and reference score matrices for every representation, 7 queries x 9 candidates."""
    queries, candidates = sentences(7, 1), sentences(9, 2)
    model, tokenizer = load_encoder(tiny_dir, "cpu")
    q_states = encode(model, tokenizer, queries, batch_size=3, max_length=64)
    c_states = encode(model, tokenizer, candidates, batch_size=4, max_length=64)
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    q_ref = [reference_states(model, tokenizer, s) for s in queries]
    c_ref = [reference_states(model, tokenizer, s) for s in candidates]
    out = {}
    for name, layers in representations(q_states.num_layers).items():
        q = Packed(q_states.tokens(layers), q_states.lengths_N, q_states.weights_T)
        c = Packed(c_states.tokens(layers), c_states.lengths_N, c_states.weights_T)
        cos_ref = torch.tensor([[reference_cosine(a[layers].mean(0), b[layers].mean(0)) for b, _ in c_ref] for a, _ in q_ref], dtype=torch.float64)
        bs_ref = torch.tensor([[reference_bertscore(a[layers].mean(0), ai, b[layers].mean(0), bi, special) for b, bi in c_ref] for a, ai in q_ref], dtype=torch.float64)
        out[name] = dict(q=q, c=c, cos=mean_pooled_cosine(q, c), cos_ref=cos_ref, bs_ref=bs_ref, q_ref=q_ref, c_ref=c_ref, layers=layers)
    return out


def test_scores_match_float64_loop(scored):
    assert len(scored) == 6 + 6  # layer_0..layer_5 and the six sets (all, every_second_odd/even, top4, middle4, bottom4)
    for name, s in scored.items():
        torch.testing.assert_close(s["cos"].double(), s["cos_ref"], atol=2e-5, rtol=0, msg=lambda m: f"{name}: {m}")
        for max_elements in (2**26, 50):  # one block; a block per sentence pair or so
            f1 = bertscore_f1(s["q"], s["c"], max_elements)
            # F1 = 2pr/(p+r) is ill-conditioned where p ≈ −r (|F1| > 1 here): float32 rounding, which varies
            # with the CPU's thread count, is amplified there, hence the relative part of the tolerance
            torch.testing.assert_close(f1.double(), s["bs_ref"], atol=2e-5, rtol=1e-4, msg=lambda m: f"{name} {max_elements}: {m}")


def test_bertscore_masks_padding_when_all_cosines_are_negative():
    """Random 3-d vectors: many tokens have no positive cosine, so a padded 0 would win a max if unmasked."""
    g = torch.Generator().manual_seed(0)
    lengths = [2, 6, 3, 5, 2, 4]
    vectors = torch.randn(sum(lengths), 3, generator=g)
    weights = torch.ones(sum(lengths))
    weights[torch.tensor(lengths).cumsum(0) - 1] = 0  # last token of each sentence plays </s>
    weights[torch.tensor(lengths).cumsum(0) - torch.tensor(lengths)] = 0  # first plays <s>
    side = Packed(vectors, torch.tensor(lengths), weights)
    split = list(torch.split(vectors.double(), lengths))
    ids = [[0] + [5] * (n - 2) + [2] for n in lengths]
    expected = torch.tensor([[0.0 if len(b) == 2 or len(a) == 2 else reference_bertscore(a, ai, b, bi, {0, 2}) for b, bi in zip(split, ids)] for a, ai in zip(split, ids)], dtype=torch.float64)
    for max_elements in (10**6, 40):
        torch.testing.assert_close(bertscore_f1(side, side, max_elements).double(), expected, atol=1e-6, rtol=0)


def test_bertscore_matches_package_score_of_pairs_scored_alone(scored, tiny_dir):
    """bert_score.score end to end (its tokenisation, layer cut, weights); batch_size=1 so no pair is padded."""
    queries, candidates = sentences(7, 1)[:3], sentences(9, 2)[:4]
    for layer in (0, 2, 5):
        _, _, f1 = bert_score([q for q in queries for _ in candidates], candidates * len(queries), model_type=str(tiny_dir), num_layers=layer, batch_size=1)
        torch.testing.assert_close(f1.view(3, 4).double(), scored[f"layer_{layer}"]["bs_ref"][:3, :4], atol=2e-5, rtol=0)


def test_retrieval_accuracies_match_reference(tiny_dir):
    model, tokenizer = load_encoder(tiny_dir, "cpu")
    texts = sentences(12, 3)
    rng = random.Random(4)
    edited = [" ".join(rng.choice(WORDS) if rng.random() < 0.4 else w for w in t.split()) for t in texts]
    result = retrieval_accuracies(encode(model, tokenizer, texts, 4, 64), encode(model, tokenizer, edited, 3, 64), max_elements=64)
    same = retrieval_accuracies(encode(model, tokenizer, texts, 4, 64), encode(model, tokenizer, texts, 5, 64), max_elements=64)
    assert result["n"] == same["n"] == 12 and list(result["cosine"]) == list(representations(5))
    assert set(same["cosine"].values()) == {1.0} and set(same["bertscore"].values()) == {1.0}
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    q_ref = [reference_states(model, tokenizer, t) for t in texts]
    c_ref = [reference_states(model, tokenizer, t) for t in edited]
    for name, layers in representations(5).items():
        cos = torch.tensor([[reference_cosine(a[layers].mean(0), b[layers].mean(0)) for b, _ in c_ref] for a, _ in q_ref])
        bs = torch.tensor([[reference_bertscore(a[layers].mean(0), ai, b[layers].mean(0), bi, special) for b, bi in c_ref] for a, ai in q_ref])
        expected = lambda m: (m.argmax(1) == torch.arange(12)).double().mean().item()  # noqa: E731
        assert result["cosine"][name] == pytest.approx(expected(cos)), name
        assert result["bertscore"][name] == pytest.approx(expected(bs)), name
