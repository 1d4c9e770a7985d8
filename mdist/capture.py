"""Q/K capture for the pre-softmax attention-score loss, without eager attention.

`ATTENTION_IMPLEMENTATION` is registered with transformers' attention interface: it runs the stock
SDPA path for the model and, when the forward call passes `qk_sink=[...]`, appends each layer's
(query, key) of shape (B, H, L, D) to it. `output_attentions` is never needed (it would force the
slow eager path and returns post-softmax probabilities).
"""
from __future__ import annotations

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_IMPLEMENTATION = "mdist_sdpa_qk"


def _sdpa_capturing_qk(module, query, key, value, attention_mask, qk_sink=None, **kwargs):
    if qk_sink is not None:
        qk_sink.append((query, key))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _sdpa_mask_as_given(*args, **kwargs):
    """transformers' SDPA mask, without its check whether a given padding mask has padding at all: that
    check reads the mask back from the device (a sync), and `mdist.encode.encode` already passes no
    mask for batches its host facts say are unpadded, so for a given mask the answer is always "keep
    it". Without a mask the skip stays allowed (it then needs no read): SDPA gets no mask."""
    if kwargs.get("attention_mask") is not None and "allow_is_bidirectional_skip" in kwargs:
        kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(ATTENTION_IMPLEMENTATION, _sdpa_capturing_qk)
# Without a registered mask builder, transformers passes the raw (B, L) padding mask through
# unchanged for an unknown implementation, and SDPA would broadcast it wrongly: build SDPA's mask.
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, _sdpa_mask_as_given)
