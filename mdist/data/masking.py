"""XLM-R / RoBERTa dynamic masking: drawn anew each time a sequence is used.

15 % of the non-special, non-padding tokens are picked; of those 80 % become <mask>, 10 % a random
(non-special) token, 10 % stay unchanged. Every picked position is a prediction target.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskingSpec:
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float = 0.15

    @functools.cached_property
    def regular_ids(self) -> torch.Tensor:
        """Ids a random replacement may take: the vocabulary minus the special tokens (built once)."""
        regular = torch.ones(self.vocab_size, dtype=torch.bool)
        regular[list(self.special_ids)] = False
        return regular.nonzero().squeeze(1)

    @functools.cached_property
    def special_ids_tensor(self) -> torch.Tensor:
        return torch.tensor(self.special_ids, dtype=torch.long)

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int, probability: float = 0.15) -> "MaskingSpec":
        return cls(tokenizer.mask_token_id, vocab_size, tuple(tokenizer.all_special_ids), probability)


def mask_tokens(ids_BL: torch.Tensor, spec: MaskingSpec, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked input ids, labels with -100 at unpicked positions)."""
    special_BL = torch.isin(ids_BL, spec.special_ids_tensor.to(ids_BL.dtype))
    draw_BL = torch.rand(ids_BL.shape, generator=generator)
    picked_BL = (draw_BL < spec.probability) & ~special_BL
    labels_BL = torch.where(picked_BL, ids_BL, torch.full_like(ids_BL, -100))
    action_BL = torch.rand(ids_BL.shape, generator=generator)
    to_mask_BL = picked_BL & (action_BL < 0.8)
    to_random_BL = picked_BL & (action_BL >= 0.8) & (action_BL < 0.9)
    random_ids_BL = spec.regular_ids[torch.randint(len(spec.regular_ids), ids_BL.shape, generator=generator)]
    masked_BL = torch.where(to_mask_BL, torch.full_like(ids_BL, spec.mask_id), ids_BL)
    masked_BL = torch.where(to_random_BL, random_ids_BL, masked_BL)
    return masked_BL, labels_BL
