"""Q/K capture for the pre-softmax attention-score loss, without eager attention.

`ATTENTION_IMPLEMENTATION` is registered with transformers' attention interface: it runs the stock
SDPA path for the model and, when the forward call passes `qk_sink=[...]`, appends each layer's
(query, key) of shape (B, H, L, D) to it. `output_attentions` is never needed (it would force the
slow eager path and returns post-softmax probabilities).
"""
from __future__ import annotations

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION_IMPLEMENTATION = "mdist_sdpa_qk"


def _sdpa_capturing_qk(module, query, key, value, attention_mask, qk_sink=None, **kwargs):
    if qk_sink is not None:
        qk_sink.append((query, key))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTENTION_IMPLEMENTATION, _sdpa_capturing_qk)
