"""Distillation loss of one (language, student) pair: the strategy's weighted terms (METHOD §3).

Averaging, stated once:
- mlm / kl: mean over masked positions (kl = T² · KL(p_T ‖ p_S) summed over the vocabulary);
- hid (MSE): per mapped pair, mean over valid (non-padding) tokens and hidden units, summed over pairs;
  hid (COS): per pair, mean over valid tokens of 1 − cos, summed over pairs;
- att: per mapped pair, mean over batch, heads and valid query × valid key pairs of the squared
  difference of pre-softmax scores QKᵀ/√d, summed over pairs (padding never enters the mean);
- emb: MSE of the embedding outputs over valid tokens and hidden units.
Legend: B batch, L sequence, D hidden, N masked positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mdist.data.batch import masked_positions
from mdist.encode import EncoderOutput
import mdist.kernels as loss_ops
from mdist.errors import ConfigError
from mdist.strategies import STRATEGIES, Strategy, layer_mapping, resolve_weights


@dataclass(frozen=True)
class DistillLoss:
    """A resolved loss: strategy, weights, mapping pairs and temperature."""

    strategy: Strategy
    weights: dict[str, float]
    pairs: tuple[tuple[int, int], ...]  # (student layer m, teacher layer g(m))
    temperature: float
    kernels: str = "torch"  # torch: PyTorch references; triton: fused kernels (mdist.kernels)

    @classmethod
    def build(cls, strategy: str, weights: dict[str, float] | None, mapping: str | None, temperature: float, student_layers: int, teacher_layers: int, kernels: str = "torch") -> "DistillLoss":
        spec = STRATEGIES[strategy]
        if kernels == "triton" and not loss_ops.TRITON_AVAILABLE:
            raise ConfigError("config key 'loss.kernels': 'triton' needs the triton package; use 'torch'")
        resolved = resolve_weights(strategy, weights)
        pairs = layer_mapping(mapping or spec.mapping, student_layers, teacher_layers)
        return cls(spec, resolved, tuple(pairs), temperature, kernels)

    def __call__(
        self, student: EncoderOutput, teacher: EncoderOutput, attention_mask_BL: torch.Tensor, labels_BL: torch.Tensor,
        project=lambda layer, h: h, masked_N: torch.Tensor | None = None, padded: bool | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Returns (weighted total, unweighted per-term values for logging as detached 0-d tensors:
        reading them is left to the caller, so the hot path does not wait for the device per term).
        `masked_N`: the masked positions the encoders used (`TokenBatch.masked_N`; left out, derived
        from the labels with a device read). `padded` (`TokenBatch.padded`): False gives the hidden and
        attention MSE no mask, so they skip the mask's counts and loads (the same means: every token counts)."""
        w = self.weights
        valid_BL = attention_mask_BL.bool()
        mse_mask_BL = None if padded is False else valid_BL
        terms: dict[str, torch.Tensor] = {}
        total = student.hidden_states[0].new_zeros((), dtype=torch.float32)
        if "mlm" in w or "kl" in w:
            labels_N = labels_BL.reshape(-1).index_select(0, masked_positions(labels_BL) if masked_N is None else masked_N)
            vocab_op = loss_ops.fused_linear_distill_loss if self.kernels == "triton" else loss_ops.fused_linear_distill_loss_reference
            vocab_loss, terms["mlm"], terms["kl"] = vocab_op(
                student.head_hidden_ND, student.decoder_weight_VD, student.decoder_bias_V,
                teacher.head_hidden_ND, teacher.decoder_weight_VD, teacher.decoder_bias_V,
                labels_N, self.temperature, w.get("mlm", 0.0), w.get("kl", 0.0), return_components=True,
            )
            total = total + vocab_loss
            terms = {k: v for k, v in terms.items() if k in w}
        if "hid" in w:
            hidden_pairs = [(project(m, student.hidden_states[m]), teacher.hidden_states[g]) for m, g in self.pairs]
            if self.strategy.hidden_loss == "mse":
                terms["hid"] = hidden_mse(hidden_pairs, mse_mask_BL, self.kernels)
            else:
                terms["hid"] = sum(hidden_cos(h_s, h_t, valid_BL) for h_s, h_t in hidden_pairs)
        if "att" in w:
            qk_pairs = [(*student.qk[m - 1], *teacher.qk[g - 1]) for m, g in self.pairs]
            if self.kernels == "triton":  # all mapped layer pairs of one shape in two launches, read in place
                terms["att"] = loss_ops.attention_score_mse_multi(qk_pairs, key_padding_mask=mse_mask_BL)
            else:
                terms["att"] = sum(loss_ops.attention_score_mse_reference(*qk, key_padding_mask=mse_mask_BL) for qk in qk_pairs)
        if "emb" in w:
            terms["emb"] = hidden_mse([(project(0, student.hidden_states[0]), teacher.hidden_states[0])], mse_mask_BL, self.kernels)
        for name in ("hid", "att", "emb"):
            if name in terms:
                total = total + w[name] * terms[name]
        return total, {name: value.detach() for name, value in terms.items()}


def hidden_mse(pairs_BLD: list[tuple[torch.Tensor, torch.Tensor]], valid_BL: torch.Tensor | None, kernels: str = "torch") -> torch.Tensor:
    """Sum over (student, teacher) pairs of the masked MSE; the fused op reads all pairs in one launch."""
    if kernels == "triton":
        return loss_ops.hidden_mse_multi(pairs_BLD, valid_BL)
    return sum(loss_ops.hidden_mse_reference(h_s, h_t, valid_BL) for h_s, h_t in pairs_BLD)


def hidden_cos(student_BLD: torch.Tensor, teacher_BLD: torch.Tensor, valid_BL: torch.Tensor) -> torch.Tensor:
    cos_BL = torch.nn.functional.cosine_similarity(student_BLD.float(), teacher_BLD.float(), dim=-1)
    return ((1 - cos_BL) * valid_BL).sum() / valid_BL.sum().clamp(min=1)
