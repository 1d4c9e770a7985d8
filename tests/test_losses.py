"""Every loss term against an independent float64 computation; Q/K capture against eager scores;
the masked-only MLM head against the full-logits computation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM

from mdist.capture import ATTENTION_IMPLEMENTATION
from mdist.encode import encode
from mdist.losses import DistillLoss
from mdist.strategies import STRATEGIES, layer_mapping


def test_mappings_match_the_thesis():
    assert layer_mapping("uniform", 6, 12) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]
    assert layer_mapping("top", 6, 12) == [(m, m + 6) for m in range(1, 7)]
    assert layer_mapping("bottom", 6, 12) == [(m, m) for m in range(1, 7)]
    assert layer_mapping("last", 6, 12) == [(6, 12)]
    with pytest.raises(ValueError):
        layer_mapping("uniform", 13, 12)


def test_strategy_table():
    assert set(STRATEGIES["monoshot"].terms) == {"mlm", "kl", "hid", "att", "emb"}
    assert STRATEGIES["monoshot"].mapping == "uniform" and STRATEGIES["monoalignment"].mapping == "last"
    assert set(STRATEGIES["tinybert"].terms) == {"hid", "att", "emb"}
    assert STRATEGIES["hinton_hidcos_att_emb"].hidden_loss == "cos"
    assert sum(STRATEGIES["monoshot"].default_weights().values()) == pytest.approx(1.0)


def _models(teacher_dir, student_layers=2):
    teacher = AutoModelForMaskedLM.from_pretrained(str(teacher_dir), attn_implementation=ATTENTION_IMPLEMENTATION).eval()
    torch.manual_seed(1)
    cfg = teacher.config.__class__.from_dict(teacher.config.to_dict())
    cfg.num_hidden_layers = student_layers
    cfg._attn_implementation = ATTENTION_IMPLEMENTATION
    student = type(teacher)(cfg).eval()
    return teacher, student


def _batch(vocab, B=3, L=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab - 1, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 8:] = 0  # padded row
    ids[1, 8:] = 1
    ids[1, 7] = 2
    labels = torch.full((B, L), -100)
    pick = (torch.rand(B, L, generator=g) < 0.3) & mask.bool()
    pick[:, 0] = False
    pick[0, 3] = True
    labels[pick] = ids[pick]
    return ids, mask, labels


def test_captured_qk_give_eager_pre_softmax_scores(tiny_teacher_dir):
    teacher, _ = _models(tiny_teacher_dir)
    ids, mask, labels = _batch(teacher.config.vocab_size)
    out = encode(teacher, ids, mask, labels)
    assert len(out.qk) == teacher.config.num_hidden_layers
    heads = teacher.config.num_attention_heads
    for layer_index, layer in enumerate(teacher.roberta.encoder.layer):
        attn = layer.attention.self
        hidden = out.hidden_states[layer_index].double()
        split = lambda x: x.view(*x.shape[:2], heads, -1).transpose(1, 2)  # noqa: E731
        q = split(F.linear(hidden, attn.query.weight.double(), attn.query.bias.double()))
        k = split(F.linear(hidden, attn.key.weight.double(), attn.key.bias.double()))
        eager_scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        q_c, k_c = out.qk[layer_index]
        captured = q_c.double() @ k_c.double().transpose(-1, -2) / math.sqrt(q_c.shape[-1])
        torch.testing.assert_close(captured, eager_scores, atol=1e-5, rtol=1e-5)
    # and the SDPA forward gives the eager model's hidden states
    teacher.config._attn_implementation = "eager"
    eager = teacher.roberta(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    valid = mask.bool()
    torch.testing.assert_close(eager.last_hidden_state[valid], out.hidden_states[-1][valid], atol=1e-5, rtol=1e-5)


def test_masked_only_head_equals_full_logits_mlm(tiny_teacher_dir):
    teacher, _ = _models(tiny_teacher_dir)
    ids, mask, labels = _batch(teacher.config.vocab_size)
    out = encode(teacher, ids, mask, labels)
    logits_N = F.linear(out.head_hidden_ND, out.decoder_weight_VD, out.decoder_bias_V)
    ours = F.cross_entropy(logits_N, labels[labels != -100])
    full = teacher(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(ours, full, atol=1e-6, rtol=1e-6)
    assert out.head_hidden_ND.shape[0] == int((labels != -100).sum())


def _reference_terms(s, t, mask, labels, pairs, T, hidden="mse"):
    """Independent float64 implementation of METHOD §3, written from the definitions."""
    valid = mask.bool()
    d = lambda x: x.double()  # noqa: E731
    sel = labels != -100
    zs = d(s.head_hidden_ND) @ d(s.decoder_weight_VD).T + d(s.decoder_bias_V)
    zt = d(t.head_hidden_ND) @ d(t.decoder_weight_VD).T + d(t.decoder_bias_V)
    mlm = -torch.log_softmax(zs, -1).gather(1, labels[sel][:, None]).mean()
    pt = torch.softmax(zt / T, -1)
    kl = (T**2) * (pt * (torch.log(pt) - torch.log_softmax(zs / T, -1))).sum(-1).mean()
    hid = 0.0
    att = 0.0
    tokens = [(b, i) for b in range(mask.shape[0]) for i in range(mask.shape[1]) if valid[b, i]]
    for m, g in pairs:
        hs, ht = d(s.hidden_states[m]), d(t.hidden_states[g])
        if hidden == "mse":
            hid = hid + torch.stack([(hs[b, i] - ht[b, i]).pow(2).mean() for b, i in tokens]).mean()
        else:  # 1 - cos per token
            hid = hid + torch.stack([1 - hs[b, i] @ ht[b, i] / (hs[b, i].norm() * ht[b, i].norm()) for b, i in tokens]).mean()
        qs, ks = map(d, s.qk[m - 1])
        qt, kt = map(d, t.qk[g - 1])
        sq = []
        for b in range(mask.shape[0]):
            n = int(valid[b].sum())
            for h in range(qs.shape[1]):
                a_s = qs[b, h, :n] @ ks[b, h, :n].T / math.sqrt(qs.shape[-1])
                a_t = qt[b, h, :n] @ kt[b, h, :n].T / math.sqrt(qt.shape[-1])
                sq.append(((a_s - a_t) ** 2).flatten())
        att = att + torch.cat(sq).mean()
    emb = torch.stack([(d(s.hidden_states[0])[b, i] - d(t.hidden_states[0])[b, i]).pow(2).mean() for b, i in tokens]).mean()
    return {"mlm": mlm, "kl": kl, "hid": hid, "att": att, "emb": emb}


# Thesis table 3.1 written out for a 2-layer student of the 4-layer test teacher: terms, the
# (student layer, teacher layer) pairs of its mapping, and the hidden loss. Not read from mdist.
_ALL = ("mlm", "kl", "hid", "att", "emb")
UNIFORM, TOP, BOTTOM, LAST = ((1, 2), (2, 4)), ((1, 3), (2, 4)), ((1, 1), (2, 2)), ((2, 4),)
TABLE_3_1 = {
    "hinton": (("mlm", "kl"), UNIFORM, "mse"),
    "hinton_hid": (("mlm", "kl", "hid"), UNIFORM, "mse"),
    "hinton_hid_att": (("mlm", "kl", "hid", "att"), UNIFORM, "mse"),
    "monoshot": (_ALL, UNIFORM, "mse"),
    "tinybert": (("hid", "att", "emb"), UNIFORM, "mse"),
    "hinton_hidcos_att_emb": (_ALL, UNIFORM, "cos"),
    "hinton_hidcos_att_emb_bottom": (_ALL, BOTTOM, "cos"),
    "hinton_hid_att_emb_top": (_ALL, TOP, "mse"),
    "hinton_hid_att_emb_bottom": (_ALL, BOTTOM, "mse"),
    "monoalignment": (_ALL, LAST, "mse"),
}


def test_table_3_1_lists_every_strategy():
    assert set(TABLE_3_1) == set(STRATEGIES)


@pytest.mark.parametrize(
    "strategy,kernels",
    [(name, "torch") for name in TABLE_3_1]  # the fused kernels: each mapping and hidden loss once (CI time)
    + [(name, "triton") for name in ("tinybert", "hinton_hidcos_att_emb_bottom", "hinton_hid_att_emb_top", "monoalignment")],
)
def test_every_term_matches_float64(tiny_teacher_dir, strategy, kernels):
    terms_expected, pairs, hidden = TABLE_3_1[strategy]
    teacher, student = _models(tiny_teacher_dir)
    ids, mask, labels = _batch(teacher.config.vocab_size)
    with torch.no_grad():
        t = encode(teacher, ids, mask, labels)
    s = encode(student, ids, mask, labels)
    raw = [0.1, 0.2, 0.3, 0.25, 0.15][: len(terms_expected)]
    weights = {k: w / sum(raw) for k, w in zip(terms_expected, raw)}
    loss_fn = DistillLoss.build(strategy, weights, None, 2.0, 2, 4, kernels)
    assert loss_fn.pairs == pairs
    total, terms = loss_fn(s, t, mask, labels)
    assert set(terms) == set(terms_expected)
    with torch.no_grad():
        ref = {k: v for k, v in _reference_terms(s, t, mask, labels, pairs, 2.0, hidden).items() if k in terms_expected}
    rel = 2e-5 if kernels == "torch" else 1e-4  # fused kernels: float32 online softmax over vocabulary chunks
    for name, value in ref.items():
        assert float(terms[name]) == pytest.approx(float(value), rel=rel, abs=1e-7), name
    assert float(total) == pytest.approx(sum(weights[k] * float(v) for k, v in ref.items()), rel=rel)
    total.backward()  # gradients reach the student
    assert student.roberta.encoder.layer[1].attention.self.query.weight.grad is not None


def test_fused_and_torch_paths_give_the_same_gradients(tiny_teacher_dir):
    """The whole MonoShot loss through the fused kernels moves every student parameter as the PyTorch path does."""
    teacher, student = _models(tiny_teacher_dir)
    ids, mask, labels = _batch(teacher.config.vocab_size)
    with torch.no_grad():
        t = encode(teacher, ids, mask, labels)
    grads = {}
    for kernels in ("torch", "triton"):
        student.zero_grad(set_to_none=True)
        loss_fn = DistillLoss.build("monoshot", None, "uniform", 2.0, 2, 4, kernels)
        loss_fn(encode(student, ids, mask, labels), t, mask, labels)[0].backward()
        grads[kernels] = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    assert grads["triton"].keys() == grads["torch"].keys() and len(grads["torch"]) > 10
    for name, want in grads["torch"].items():
        torch.testing.assert_close(grads["triton"][name], want, rtol=1e-4, atol=1e-6, msg=name)


def _encoded_pair(teacher_dir):
    """(student output, teacher output, mask, labels) without gradients."""
    teacher, student = _models(teacher_dir)
    ids, mask, labels = _batch(teacher.config.vocab_size)
    with torch.no_grad():
        return encode(student, ids, mask, labels), encode(teacher, ids, mask, labels), mask, labels


def test_cosine_hidden_loss_matches_float64(tiny_teacher_dir):
    s, t, mask, labels = _encoded_pair(tiny_teacher_dir)
    loss_fn = DistillLoss.build("hinton_hidcos_att_emb", None, None, 1.0, 2, 4)
    _, terms = loss_fn(s, t, mask, labels)
    valid = mask.bool()
    expected = sum(
        (1 - F.cosine_similarity(s.hidden_states[m].double()[valid], t.hidden_states[g].double()[valid], dim=-1)).mean()
        for m, g in loss_fn.pairs
    )
    assert float(terms["hid"]) == pytest.approx(float(expected), rel=1e-5)


def test_hinton_strategy_has_only_vocabulary_terms(tiny_teacher_dir):
    s, t, mask, labels = _encoded_pair(tiny_teacher_dir)
    _, terms = DistillLoss.build("hinton", None, None, 1.0, 2, 4)(s, t, mask, labels)
    assert set(terms) == {"mlm", "kl"}
