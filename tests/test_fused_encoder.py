"""`enable_fused_encoder`: the Hugging Face model's outputs, Q/K and gradients through mdist's own
compiled layer (post-LN XLM-R and pre-LN XLM-R-XL), dropout in training mode only, the state dict
untouched, one graph for every layer, and a `mdist distill` run with `train.encoder: fused`.

References: the Hugging Face model in eager attention (its logits, hidden states and attention
probabilities; Q and K recomputed from its hidden states through its own query/key modules) and
mdist's `encode` on the Hugging Face path. On a CUDA machine the models run there (bf16 unpadded:
SDPA's flash kernel).
Legend: B batch, L sequence, H heads, K head width, N masked positions.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel, XLMRobertaXLConfig, XLMRobertaXLForMaskedLM

from mdist import fused_encoder
from mdist.capture import ATTENTION_IMPLEMENTATION
from mdist.config import load_run_config
from mdist.encode import EncoderOutput, encode
from mdist.fused_encoder import enable_fused_encoder

FAMILIES = {"xlmr": (XLMRobertaConfig, XLMRobertaForMaskedLM), "xlmr_xl": (XLMRobertaXLConfig, XLMRobertaXLForMaskedLM)}
PAD = 1
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny_model(family: str, dropout: float = 0.0, layers: int = 3):
    """Random weights with every parameter perturbed (biases and LayerNorms not at their zero/one
    init, so a swapped or skipped norm or bias shows)."""
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
        type_vocab_size=1, pad_token_id=PAD, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, attn_implementation="eager",
    )
    model = model_cls(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.to(DEVICE)


def batch(padded: bool):
    gen = torch.Generator().manual_seed(1)
    ids_BL = torch.randint(5, 59, (3, 12), generator=gen)
    mask_BL = torch.ones_like(ids_BL)
    if padded:
        mask_BL[1, 8:], mask_BL[2, 5:] = 0, 0
        ids_BL[mask_BL == 0] = PAD
    labels_BL = torch.full_like(ids_BL, -100)
    labels_BL[:, 3] = ids_BL[:, 3]
    return ids_BL.to(DEVICE), mask_BL.to(DEVICE), labels_BL.to(DEVICE)


def eager_reference(model, ids_BL, mask_BL, labels_BL):
    """(hidden states, per-layer (Q, K), masked logits, attention probabilities) from the Hugging Face eager forward."""
    out = model(input_ids=ids_BL, attention_mask=mask_BL, output_hidden_states=True, output_attentions=True)
    qk = []
    for layer, h_BLD in zip(model.base_model.encoder.layer, out.hidden_states):
        attention = layer.attention
        x_BLD = attention.self_attn_layer_norm(h_BLD) if hasattr(attention, "self_attn_layer_norm") else h_BLD  # XL: pre-LN
        heads = model.config.num_attention_heads
        q_BHLK, k_BHLK = (proj(x_BLD).view(*x_BLD.shape[:2], heads, -1).transpose(1, 2) for proj in (attention.self.query, attention.self.key))
        qk.append((q_BHLK, k_BHLK))
    return out.hidden_states, qk, out.logits[labels_BL != -100], out.attentions


def mdist_outputs(model, ids_BL, mask_BL, labels_BL):
    out: EncoderOutput = encode(model, ids_BL, mask_BL, labels_BL)
    return out.hidden_states, out.qk, F.linear(out.head_hidden_ND, out.decoder_weight_VD, out.decoder_bias_V)


def loss(hidden_states, qk, logits_NV) -> torch.Tensor:
    """Touches every output with fixed random weights (squares of LayerNorm outputs would be nearly constant)."""
    gen = torch.Generator().manual_seed(2)
    terms = [*hidden_states, *(q @ k.transpose(-1, -2) for q, k in qk), logits_NV]
    return sum((t * torch.randn(t.shape, generator=gen).to(t.device)).mean() for t in terms)


def assert_outputs_close(got, want, rtol: float, atol: float):
    for k, (a, b) in enumerate(zip(got[0], want[0], strict=True)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"hidden state {k}")
    for k, ((qa, ka), (qb, kb)) in enumerate(zip(got[1], want[1], strict=True)):
        torch.testing.assert_close(qa, qb, rtol=rtol, atol=atol, msg=f"query {k}")
        torch.testing.assert_close(ka, kb, rtol=rtol, atol=atol, msg=f"key {k}")
    torch.testing.assert_close(got[2], want[2], rtol=rtol, atol=atol, msg="masked logits")


def assert_grads_close(model, reference, rtol: float, atol: float):
    for (name, a), (_, b) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=atol, msg=name)


@pytest.fixture
def layer_calls(monkeypatch) -> list[tuple[bool, bool]]:
    """(mask given, grad enabled) of every call of the fused layer."""
    calls = []
    compiled = fused_encoder._layer

    def recording(x_BLD, mask_B11L, *args):
        calls.append((mask_B11L is not None, torch.is_grad_enabled()))
        return compiled(x_BLD, mask_B11L, *args)

    monkeypatch.setattr(fused_encoder, "_layer", recording)
    return calls


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_equals_hugging_face_eager_and_encode(family, padded, layer_calls):
    """With the session's backend (inductor on a GPU; aot_eager on the CPU, see conftest.py)."""
    check_fused_equals_hugging_face(family, padded, layer_calls)


def test_inductor_backend_equals_hugging_face(monkeypatch):
    """The default backend on this machine too: inductor's generated kernels, forward and backward."""
    calls = []
    compiled = torch.compile(fused_encoder._layer_eager, backend="inductor")

    def recording(x_BLD, mask_B11L, *args):
        calls.append((mask_B11L is not None, torch.is_grad_enabled()))
        return compiled(x_BLD, mask_B11L, *args)

    monkeypatch.setattr(fused_encoder, "_layer", recording)
    check_fused_equals_hugging_face("xlmr_xl", True, calls)


def check_fused_equals_hugging_face(family: str, padded: bool, layer_calls: list):
    eager = tiny_model(family)
    hf = copy.deepcopy(eager)
    hf.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    fused = enable_fused_encoder(copy.deepcopy(hf))
    inputs = batch(padded)

    torch._dynamo.reset()
    counters.clear()
    got = mdist_outputs(fused, *inputs)
    loss(*got).backward()
    want_eager = eager_reference(eager, *inputs)
    loss(*want_eager[:3]).backward()
    want_encode = mdist_outputs(hf, *inputs)
    loss(*want_encode).backward()

    assert_outputs_close(got, want_eager[:3], rtol=1e-5, atol=1e-5)
    assert_outputs_close(got, want_encode, rtol=1e-5, atol=1e-5)
    for (q_BHLK, k_BHLK), probs_BHLL in zip(got[1], want_eager[3]):  # the Q and K the attention uses
        scores_BHLL = (q_BHLK @ k_BHLK.transpose(-1, -2)) / math.sqrt(q_BHLK.shape[-1])
        scores_BHLL = scores_BHLL.masked_fill(inputs[1][:, None, None, :] == 0, float("-inf"))
        torch.testing.assert_close(scores_BHLL.softmax(-1), probs_BHLL, rtol=1e-5, atol=1e-6)
    assert_grads_close(fused, eager, rtol=1e-4, atol=1e-5)
    assert_grads_close(fused, hf, rtol=1e-4, atol=1e-5)
    assert [masked for masked, _ in layer_calls] == [padded] * 3  # unpadded: no mask, so the GPU may pick flash

    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1  # every layer, forward and backward: one graph
    with torch.no_grad():  # the teacher's mode: one more
        encode(fused, *inputs)
    assert counters["stats"]["unique_graphs"] == 2


def test_varying_lengths_compile_twice_and_never_fall_back(layer_calls):
    """Held-out batches are padded to their longest window, so lengths vary at step 0: the layer
    compiles once static and once dynamic, and every further length reuses the dynamic graph (static
    graphs would pass torch's recompile limit of 8 and run the rest, training included, uncompiled)."""
    fused = enable_fused_encoder(tiny_model("xlmr", layers=1).eval())
    torch._dynamo.reset()
    counters.clear()
    lengths = range(6, 36, 3)  # 10 lengths, past the recompile limit
    with torch.no_grad():
        for length in lengths:
            ids_BL = torch.randint(5, 59, (2, length), device=DEVICE)
            labels_BL = torch.full_like(ids_BL, -100)
            labels_BL[:, 1] = ids_BL[:, 1]
            out = encode(fused, ids_BL, torch.ones_like(ids_BL), labels_BL)
            assert out.hidden_states[-1].shape == (2, length, 32)
    assert len(layer_calls) == len(lengths)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 is the GPU's training dtype (flash attention, Triton codegen): runs where CUDA is, saving CI a CPU-only compile")
def test_bf16_matches_the_hugging_face_path():
    """Unpadded, as training batches are packed (on the GPU: no mask, the flash kernel)."""
    hf = tiny_model("xlmr").to(torch.bfloat16)
    hf.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    fused = enable_fused_encoder(copy.deepcopy(hf))
    inputs = batch(padded=False)
    got, want = mdist_outputs(fused, *inputs), mdist_outputs(hf, *inputs)
    assert got[0][-1].dtype == torch.bfloat16
    assert_outputs_close(got, want, rtol=2e-2, atol=3e-2)
    loss(*got).backward()
    loss(*want).backward()
    assert_grads_close(fused, hf, rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU (elsewhere `cuda_graphs` compiles as without)")
def test_cuda_graphs_train_like_the_hugging_face_path():
    """Three training steps (forward, backward, an SGD update of every parameter in place), each layer
    replayed as a CUDA graph: outputs and gradients equal the Hugging Face path's at every step, so the
    replays read the updated parameters and write fresh outputs."""
    hf = tiny_model("xlmr")
    hf.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    graphed = enable_fused_encoder(copy.deepcopy(hf), cuda_graphs=True)
    torch._dynamo.reset()
    for step in range(3):
        inputs = batch(padded=step == 1)
        got, want = mdist_outputs(graphed, *inputs), mdist_outputs(hf, *inputs)
        assert_outputs_close(got, want, rtol=1e-5, atol=1e-5)
        loss(*got).backward()
        loss(*want).backward()
        assert_grads_close(graphed, hf, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            for model in (graphed, hf):
                for param in model.parameters():
                    param.sub_(0.1 * param.grad)
                    param.grad = None


def test_dropout_in_training_mode_only():
    """Layer 1 isolates the attention-output dropout, layer 2 the feed-forward output dropout: a zero
    output projection and a large bias c, so a LayerNorm after `dropout(c) + x` is negative exactly
    where dropout zeroed (about p of them, independently per layer). Attention-probability dropout:
    outputs differ from eval."""
    p = 0.25
    model = enable_fused_encoder(tiny_model("xlmr", dropout=p, layers=2))
    first, second = model.base_model.encoder.layer
    with torch.no_grad():
        for linear, bias in ((first.attention.output.dense, 100.0), (first.output.dense, 0.0), (second.attention.output.dense, 0.0), (second.output.dense, 100.0)):
            linear.weight.zero_()
            linear.bias.fill_(bias)
        for norm in (first.attention.output.LayerNorm, first.output.LayerNorm, second.attention.output.LayerNorm, second.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        ids_BL, mask_BL, labels_BL = batch(padded=False)
        hidden = encode(model.train(), ids_BL, mask_BL, labels_BL).hidden_states
        zeroed = [(h < 0).float() for h in hidden[1:]]
        for k, z in enumerate(zeroed, 1):
            assert abs(z.mean().item() - p) < 0.06, (k, z.mean().item())
        assert (zeroed[0] * zeroed[1]).mean().item() < p * p + 0.05  # layer 2's own mask, not layer 1's signs passed on
        assert (encode(model.eval(), ids_BL, mask_BL, labels_BL).hidden_states[2] < 0).float().mean().item() > 0.3  # no dropout: LN(x)'s signs

        attention_only = tiny_model("xlmr", dropout=0.0, layers=2)
        for layer in attention_only.base_model.encoder.layer:
            layer.attention.self.dropout.p = 0.5
        enable_fused_encoder(attention_only)
        evaluated = encode(attention_only.eval(), ids_BL, mask_BL, labels_BL).hidden_states[-1]
        trained = encode(attention_only.train(), ids_BL, mask_BL, labels_BL).hidden_states[-1]
        assert (trained - evaluated).abs().max() > 0.1


def test_state_dict_and_modules_unchanged_and_other_models_refused():
    model = tiny_model("xlmr_xl")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [name for name, _ in model.named_modules()]
    enable_fused_encoder(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert [name for name, _ in model.named_modules()] == modules
    with pytest.raises(ValueError, match="not XLMRobertaModel"):
        enable_fused_encoder(XLMRobertaModel(model.config))
    relu = tiny_model("xlmr")
    relu.config.hidden_act = "relu"
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        enable_fused_encoder(relu)


def test_distill_runs_with_the_fused_encoder(tmp_path, layer_calls):
    from mdist.run import run_distillation  # here: it imports DeepSpeed, which the GPU machine lacks (the other tests run there)

    summary = run_distillation(load_run_config("tiny", ["train.steps=2", "train.encoder=fused", "tracking.enabled=false"]), tmp_path)
    assert summary["steps"] == 2
    for pair, terms in summary["final_losses"].items():
        assert all(math.isfinite(value) for value in terms.values()), (pair, terms)
    assert (tmp_path / "students" / "en" / "model.safetensors").is_file()
    grads = [grad for _, grad in layer_calls]  # 2 steps x 2 languages: the 4-layer teacher without grad, a 2-layer student with
    assert (grads.count(False), grads.count(True)) == (2 * 2 * 4, 2 * 2 * 2)
