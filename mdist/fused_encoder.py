"""mdist's own encoder-layer forward over a Hugging Face XLM-R-family model's parameters.

The Hugging Face layer runs as modules: three Q/K/V GEMMs and separate bias, GELU, dropout,
residual and LayerNorm kernels, with attention behind transformers' dispatch (which dynamo cannot
compile whole). Here one function computes a whole layer from its parameter tensors, Q/K/V as one
GEMM, and is compiled once per process for every layer of every model (teacher and students): one
graph per grad mode and padding case, not per layer or per shape: the first shape compiles static,
and a dimension seen to change (held-out batches padded to their longest, a narrower student) is
recompiled once as dynamic. Static-only graphs would fill torch's recompile limit (8) with held-out
shapes at step 0, and the training shape would then run uncompiled. The module tree, parameter names
and state dict stay the Hugging Face ones, so checkpoints, exports and optimisers do not change.
The fused path reads parameters directly, bypassing ZeRO-3's gather hooks: not for ZeRO-3 models.
Legend: B batch, L sequence, D hidden, H heads, K head width (Dh), F feed-forward width.
"""
from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, XLMRobertaForMaskedLM, XLMRobertaXLForMaskedLM

from mdist.encode import FUSED_ENCODE, EncoderOutput, encoder_output

PRE_LN = {XLMRobertaForMaskedLM: False, XLMRobertaXLForMaskedLM: True}  # XL normalises before each block
GELU_APPROXIMATE = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}  # config.hidden_act -> F.gelu(approximate=)
# torch.compile backend of the layer, read at import: inductor (default; Triton kernels on a GPU), or
# e.g. aot_eager, which traces and differentiates the same graph without generating kernels
# (debugging; the CPU test suite, where inductor's C++ kernels are not what a GPU run executes)
BACKEND_ENV = "MDIST_FUSED_BACKEND"


def enable_fused_encoder(model: PreTrainedModel, cuda_graphs: bool = False) -> PreTrainedModel:
    """Mark `model` so that `mdist.encode.encode` runs it through `fused_encode`; nothing else changes.
    `cuda_graphs`: replay each layer as a CUDA graph (benchmarks/throughput.py measures it; not yet a
    config option)."""
    if type(model) not in PRE_LN:
        raise ValueError(f"the fused encoder supports {', '.join(cls.__name__ for cls in PRE_LN)}, not {type(model).__name__}")
    config = model.config
    positions = getattr(config, "position_embedding_type", "absolute")  # older transformers also had relative ones
    if config.is_decoder or config.hidden_act not in GELU_APPROXIMATE or positions != "absolute":
        raise ValueError(
            f"the fused encoder runs bidirectional encoders with absolute positions and activation {' or '.join(GELU_APPROXIMATE)}, "
            f"not is_decoder={config.is_decoder}, position_embedding_type={positions!r}, hidden_act={config.hidden_act!r}"
        )
    setattr(model, FUSED_ENCODE, partial(fused_encode, cuda_graphs=cuda_graphs))
    return model


def _layer_norm(x_BLD: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor], eps: float) -> torch.Tensor:
    return F.layer_norm(x_BLD, x_BLD.shape[-1:], *norm, eps)


def _layer_eager(x_BLD, mask_B11L, q, k, v, attn_out, norm1, ffn_in, ffn_out, norm2, heads: int, eps: float, approximate: str,
           p_attn: float, p_attn_out: float, p_ffn_out: float, training: bool, pre_ln: bool):
    """One encoder layer; every weight argument is a (weight, bias) pair. Post-LN (XLM-R):
    x = LN1(x + drop(attn(x) W_o)); x = LN2(x + drop(gelu(x W_i) W_f)). Pre-LN (XL): x = x + drop(attn(LN1(x)) W_o);
    x = x + gelu(LN2(x) W_i) W_f (XL's FFN output has no dropout: p_ffn_out is 0). Returns the layer
    output and the (B, H, L, Dh) query and key, before SDPA's 1/sqrt(Dh) scaling."""
    B, L, D = x_BLD.shape
    attn_in_BLD = _layer_norm(x_BLD, norm1, eps) if pre_ln else x_BLD
    qkv_BL3D = F.linear(attn_in_BLD, torch.cat([q[0], k[0], v[0]]), torch.cat([q[1], k[1], v[1]]))
    q_BHLK, k_BHLK, v_BHLK = qkv_BL3D.view(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4).unbind(0)
    ctx_BHLK = F.scaled_dot_product_attention(q_BHLK, k_BHLK, v_BHLK, attn_mask=mask_B11L, dropout_p=p_attn if training else 0.0)
    attn_BLD = F.dropout(F.linear(ctx_BHLK.transpose(1, 2).reshape(B, L, D), *attn_out), p_attn_out, training) + x_BLD
    if not pre_ln:
        attn_BLD = _layer_norm(attn_BLD, norm1, eps)
    ffn_in_BLD = _layer_norm(attn_BLD, norm2, eps) if pre_ln else attn_BLD
    h_BLF = F.gelu(F.linear(ffn_in_BLD, *ffn_in), approximate=approximate)
    out_BLD = F.dropout(F.linear(h_BLF, *ffn_out), p_ffn_out, training) + attn_BLD
    return (out_BLD if pre_ln else _layer_norm(out_BLD, norm2, eps)), q_BHLK, k_BHLK


_BACKEND = os.environ.get(BACKEND_ENV, "inductor")
# dynamic=None: the first shape static; a dimension seen to change is compiled dynamic once
_layer = torch.compile(_layer_eager, backend=_BACKEND)
# With CUDA graphs (inductor's "reduce-overhead"): each layer call replays a recorded graph instead of
# launching its kernels one by one, for launch-bound small batches; a new shape records a new graph.
# Other backends have no such mode: there it is `_layer`.
_layer_graphed = torch.compile(_layer_eager, mode="reduce-overhead") if _BACKEND == "inductor" else _layer


def _pair(linear) -> tuple[torch.Tensor, torch.Tensor]:
    return linear.weight, linear.bias


def _layer_arguments(layer, pre_ln: bool) -> tuple:
    """The parameters and dropout rates of one Hugging Face layer, in `_layer`'s order (the rates are
    the modules' own, as the Hugging Face forward uses them)."""
    attention = layer.attention
    if pre_ln:
        norms = (_pair(attention.self_attn_layer_norm), _pair(layer.LayerNorm))
        p_ffn_out = 0.0
    else:
        norms = (_pair(attention.output.LayerNorm), _pair(layer.output.LayerNorm))
        p_ffn_out = layer.output.dropout.p
    s = attention.self
    return (
        _pair(s.query), _pair(s.key), _pair(s.value), _pair(attention.output.dense), norms[0],
        _pair(layer.intermediate.dense), _pair(layer.output.dense), norms[1],
    ), (s.dropout.p, attention.output.dropout.p, p_ffn_out)


def fused_encode(
    model: PreTrainedModel, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, masked_N: torch.Tensor, padded: bool,
    cuda_graphs: bool = False,
) -> EncoderOutput:
    """`mdist.encode.encode`'s contract through `_layer`. Without padding SDPA gets no mask (the GPU
    picks flash); with padding, the key-padding mask transformers' SDPA path builds."""
    base, config = model.base_model, model.config
    pre_ln = PRE_LN[type(model)]
    mask_B11L = attention_mask_BL.bool()[:, None, None, :] if padded else None
    hidden_BLD = base.embeddings(input_ids=input_ids_BL)
    hidden_states, qk = [hidden_BLD], []
    layer_fn = _layer_graphed if cuda_graphs else _layer
    for layer in base.encoder.layer:
        params, rates = _layer_arguments(layer, pre_ln)
        hidden_BLD, q_BHLK, k_BHLK = layer_fn(
            hidden_BLD, mask_B11L, *params, config.num_attention_heads, config.layer_norm_eps, GELU_APPROXIMATE[config.hidden_act],
            *rates, model.training, pre_ln,
        )
        hidden_states.append(hidden_BLD)
        qk.append((q_BHLK, k_BHLK))
    if pre_ln:  # XL's final LayerNorm: its output is the last hidden state, as in Hugging Face's outputs
        hidden_states[-1] = base.encoder.LayerNorm(hidden_BLD)
    return encoder_output(model, tuple(hidden_states), qk, hidden_states[-1], masked_N)
