"""`compile_encoder_layers`: the same outputs, Q/K and gradients as the eager model, no graph break,
and one compiled graph per block class (not per layer). The engine-level check (ZeRO-2, whole runs)
is in test_multirank.py."""
from __future__ import annotations

import copy

import torch
from torch._dynamo.utils import counters
from transformers import AutoModelForMaskedLM

from mdist.capture import ATTENTION_IMPLEMENTATION
from mdist.encode import compile_encoder_layers, encode


def _loss(out) -> torch.Tensor:
    """Touches every output encode() gives the loss: hidden states, captured Q/K, the head at masked positions."""
    hidden = sum(h.pow(2).mean() for h in out.hidden_states)
    qk = sum((q @ k.transpose(-1, -2)).pow(2).mean() for q, k in out.qk)
    return hidden + qk + out.head_hidden_ND.pow(2).mean()


def test_compiled_layers_match_eager_without_graph_breaks(tiny_teacher_dir):
    eager = AutoModelForMaskedLM.from_pretrained(str(tiny_teacher_dir), attn_implementation=ATTENTION_IMPLEMENTATION)
    eager.config.hidden_dropout_prob = 0.0
    for module in eager.modules():  # dropout off so both sides compute the same thing
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    compiled = compile_encoder_layers(copy.deepcopy(eager))
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints and exports unchanged
    gen = torch.Generator().manual_seed(0)
    ids_BL = torch.randint(5, eager.config.vocab_size - 1, (3, 20), generator=gen)
    mask_BL = torch.ones_like(ids_BL)
    mask_BL[1, 14:] = 0  # padding reaches the attention core as a mask
    labels_BL = torch.full_like(ids_BL, -100)
    labels_BL[:, 5] = ids_BL[:, 5]

    torch._dynamo.reset()
    counters.clear()
    outs = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        out = encode(model, ids_BL, mask_BL, labels_BL)
        _loss(out).backward()
        outs[name] = out
    for a, b in zip(outs["eager"].hidden_states, outs["compiled"].hidden_states):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert len(outs["compiled"].qk) == eager.config.num_hidden_layers
    for (qa, ka), (qb, kb) in zip(outs["eager"].qk, outs["compiled"].qk):
        torch.testing.assert_close(qb, qa, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kb, ka, rtol=1e-5, atol=1e-5)
    for (name, pa), (_, pb) in zip(eager.named_parameters(), compiled.named_parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)

    assert not counters["graph_break"], dict(counters["graph_break"])
    # attention output, intermediate, output: one graph each, shared by all layers
    assert counters["stats"]["unique_graphs"] == 3
    with torch.no_grad():  # the teacher's mode: one more graph per block class, still not per layer
        encode(compiled, ids_BL, mask_BL, labels_BL)
    assert counters["stats"]["unique_graphs"] == 6
