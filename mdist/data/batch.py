"""The one typed object that flows from the data pipeline into a distillation step."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    """One language's batch, already masked; teacher and student see the same `input_ids_BL`.

    labels_BL holds the original token at masked positions and -100 elsewhere.
    """

    lang: str
    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    labels_BL: torch.Tensor

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(
            self.lang,
            self.input_ids_BL.to(device, non_blocking=True),
            self.attention_mask_BL.to(device, non_blocking=True),
            self.labels_BL.to(device, non_blocking=True),
        )

    @property
    def tokens(self) -> int:
        return int(self.attention_mask_BL.sum())
