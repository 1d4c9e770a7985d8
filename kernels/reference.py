"""PyTorch references of the fused losses: straightforward, materialise everything, any dtype.

Legend: B batch, H heads, L sequence, D head/hidden width, N masked rows, V vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_score_mse_reference(q_s, k_s, q_t, k_t, key_padding_mask=None):
    """Mean over b, h and valid (query i, key j) pairs of (q_s[i]·k_s[j]/√D_s − q_t[i]·k_t[j]/√D_t)².

    q/k: (B, H, L, D_s) and (B, H, L, D_t); key_padding_mask (B, L) bool, True = real token.
    Padded positions are excluded both as queries and as keys (TinyBERT zeroes the masked scores;
    we instead average over valid pairs only, so padding never dilutes the loss).
    """
    scores_s_BHLL = q_s @ k_s.transpose(-1, -2) / q_s.shape[-1] ** 0.5
    scores_t_BHLL = q_t @ k_t.transpose(-1, -2) / q_t.shape[-1] ** 0.5
    sq_BHLL = (scores_s_BHLL - scores_t_BHLL.to(scores_s_BHLL.dtype)) ** 2
    if key_padding_mask is None:
        return sq_BHLL.mean()
    valid_BLL = key_padding_mask[:, :, None] & key_padding_mask[:, None, :]
    pairs = valid_BLL.sum() * q_s.shape[1]
    return (sq_BHLL * valid_BLL[:, None]).sum() / pairs.clamp(min=1)


def hidden_mse_reference(h_s, h_t, valid=None):
    """Mean over valid tokens (valid (…) bool, True = real) and hidden units of (h_s − h_t)²; h (…, D), at least fp32 math."""
    dtype = torch.promote_types(h_s.dtype, torch.float32)
    sq = ((h_s.to(dtype) - h_t.to(dtype)) ** 2).mean(-1)
    if valid is None:
        return sq.mean()
    return (sq * valid).sum() / valid.sum().clamp(min=1)


def fused_linear_distill_loss_reference(
    h_s, w_s, b_s, h_t, w_t, b_t, labels, temperature, ce_weight, kl_weight, return_components=False
):
    """ce_weight · mean CE(h_s w_sᵀ + b_s, labels) + kl_weight · T² · mean KL(p_t^T ‖ p_s^T), over rows with label ≠ −100.

    With `return_components`, also returns the detached unweighted CE and T²·KL means (for logging).
    """
    keep_N = labels != -100
    count = keep_N.sum().clamp(min=1)
    upcast = torch.promote_types(h_s.dtype, torch.float32)  # bf16/fp16 -> fp32; float64 stays float64 (tests' ground truth)
    logits_s_NV = F.linear(h_s, w_s, b_s).to(upcast)
    ce = (F.cross_entropy(logits_s_NV, labels.masked_fill(~keep_N, 0), reduction="none") * keep_N).sum() / count
    logits_t_NV = F.linear(h_t, w_t, b_t).to(upcast)
    log_p_s = F.log_softmax(logits_s_NV / temperature, dim=-1)
    log_p_t = F.log_softmax(logits_t_NV / temperature, dim=-1)
    kl_N = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    kl = temperature**2 * (kl_N * keep_N).sum() / count
    loss = ce_weight * ce + kl_weight * kl
    if return_components:
        return loss, ce.detach(), kl.detach()
    return loss
