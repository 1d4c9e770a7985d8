"""One forward pass of an XLM-R-family masked LM, shaped for distillation (teacher and students).

Runs the encoder with SDPA while capturing every layer's Q and K, keeps all hidden states, and
runs the MLM head's transform only at masked positions; the vocabulary projection (decoder weight
and bias) is handed to the loss, which never needs full-sequence logits. A model marked by
`mdist.fused_encoder.enable_fused_encoder` carries its own forward (`FUSED_ENCODE`), which `encode`
runs instead, so this module does not import it.
Legend: B batch, L sequence, D hidden, H heads, Dh head width, N masked positions, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from mdist.data.batch import masked_positions

FUSED_ENCODE = "_mdist_fused_encode"  # the attribute holding a marked model's encode function


@dataclass
class EncoderOutput:
    hidden_states: tuple[torch.Tensor, ...]  # (B, L, D) each; [0] embedding output, [k] layer k
    qk: list[tuple[torch.Tensor, torch.Tensor]]  # per layer k-1: (B, H, L, Dh) query and key
    head_hidden_ND: torch.Tensor  # MLM-head transform at masked positions
    decoder_weight_VD: torch.Tensor
    decoder_bias_V: torch.Tensor


def compile_encoder_layers(model: PreTrainedModel) -> PreTrainedModel:
    """Compile (`torch.compile`) the blocks of every encoder layer around its attention core, in place.

    What is compiled: the feed-forward blocks and the attention output block (dense -> dropout ->
    residual -> LayerNorm, dense -> GELU; XL's pre-norms), whose elementwise work fuses around the
    matrix products. What stays eager, and why:
    - the attention core (Q/K/V and SDPA): it holds the Q/K capture (`mdist.capture`), and left eager
      it gets transformers' padding check, which passes no mask to SDPA for unpadded batches (the
      flash kernel); a compiled model always builds the mask;
    - the layer call itself: transformers records hidden states with hooks that read a ContextVar,
      which dynamo cannot trace (a graph break per layer, then recompilations past the limit).
    Blocks of one class share one compiled graph per grad mode. Parameter names and the state dict
    are unchanged, so checkpoints and exports are those of the eager model.
    """
    for layer in model.base_model.encoder.layer:
        for name, block in layer.named_children():
            inner = block.named_children() if name in ("attention", "crossattention") else [(name, block)]
            for inner_name, module in inner:
                if inner_name != "self":
                    module.forward = torch.compile(module.forward)
    return model


def head_transform(model: PreTrainedModel, hidden_ND: torch.Tensor) -> torch.Tensor:
    """The MLM head up to (not including) the decoder: dense -> gelu -> LayerNorm."""
    head = model.lm_head
    return head.layer_norm(torch.nn.functional.gelu(head.dense(hidden_ND)))


def encoder_output(model: PreTrainedModel, hidden_states: tuple[torch.Tensor, ...], qk: list, last_BLD: torch.Tensor, masked_N: torch.Tensor) -> EncoderOutput:
    """The EncoderOutput of one encoder pass: the MLM head's transform at the masked positions of `last_BLD`."""
    hidden_last_ND = last_BLD.reshape(-1, last_BLD.shape[-1]).index_select(0, masked_N)
    return EncoderOutput(
        hidden_states=hidden_states,
        qk=qk,
        head_hidden_ND=head_transform(model, hidden_last_ND),
        decoder_weight_VD=model.lm_head.decoder.weight,
        decoder_bias_V=model.lm_head.decoder.bias,
    )


def encode(
    model: PreTrainedModel, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, labels_BL: torch.Tensor,
    *, masked_N: torch.Tensor | None = None, padded: bool | None = None,
) -> EncoderOutput:
    """One pass of `model`. `masked_N` (`masked_positions(labels_BL)`) and `padded` (some attention-mask
    entry is 0) are the batch's host facts (`TokenBatch`); given, the pass makes no device sync of its
    own, left out they are read from the tensors."""
    if masked_N is None:
        masked_N = masked_positions(labels_BL)
    if padded is None:
        padded = not bool(attention_mask_BL.all())
    fused = getattr(model, FUSED_ENCODE, None)
    if fused is not None:
        return fused(model, input_ids_BL, attention_mask_BL, masked_N, padded)
    qk_sink: list = []
    # no mask for unpadded batches: transformers then skips its own padding check (a device sync) and SDPA gets no mask
    out = model.base_model(input_ids=input_ids_BL, attention_mask=attention_mask_BL if padded else None, output_hidden_states=True, qk_sink=qk_sink)
    # for pre-LN models (XL) the last hidden state includes the final LayerNorm
    return encoder_output(model, out.hidden_states, qk_sink, out.last_hidden_state, masked_N)
