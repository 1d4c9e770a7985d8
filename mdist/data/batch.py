"""The one typed object that flows from the data pipeline into a distillation step."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_positions(labels_BL: torch.Tensor) -> torch.Tensor:
    """Flat positions (row · L + column) of the masked tokens (label ≠ −100), ascending. On a GPU this
    reads the count back (a device sync): a step passes `TokenBatch.masked_N`, made on the host."""
    return (labels_BL.reshape(-1) != -100).nonzero().squeeze(1)


@dataclass
class TokenBatch:
    """One language's batch, already masked; teacher and student see the same `input_ids_BL`.

    labels_BL holds the original token at masked positions and -100 elsewhere.

    Why the host facts (`masked_per_row`, `real_per_row`): the step needs the number of masked tokens
    (the MLM head's rows, the loss's labels) and whether any sequence is padded (the attention mask)
    as Python values. Read from a GPU tensor each is a device sync, which drains the GPU's queue
    several times per step; the data sources build batches on the CPU, where they cost nothing, and
    `to` and `rows` carry them along.
    """

    lang: str
    input_ids_BL: torch.Tensor
    attention_mask_BL: torch.Tensor
    labels_BL: torch.Tensor
    masked_N: torch.Tensor | None = None  # flat positions (row · L + column) of the masked tokens, ascending
    masked_per_row: tuple[int, ...] | None = None  # host: masked tokens in each row
    real_per_row: tuple[int, ...] | None = None  # host: real (non-padding) tokens in each row

    def __post_init__(self):
        if self.masked_N is None:  # derived from the tensors: free on the CPU, device reads elsewhere
            self.masked_N = masked_positions(self.labels_BL)
            self.masked_per_row = tuple((self.labels_BL != -100).sum(1).tolist())
            self.real_per_row = tuple((self.attention_mask_BL != 0).sum(1).tolist())

    @property
    def tokens(self) -> int:
        return sum(self.real_per_row)

    @property
    def padded(self) -> bool:
        """Some sequence has padding (the encoders then need an attention mask)."""
        return any(real < self.input_ids_BL.shape[1] for real in self.real_per_row)

    def to(self, device: torch.device | str) -> "TokenBatch":
        moved = (x.to(device, non_blocking=True) for x in (self.input_ids_BL, self.attention_mask_BL, self.labels_BL, self.masked_N))
        return TokenBatch(self.lang, *moved, self.masked_per_row, self.real_per_row)

    def rows(self, start: int, stop: int) -> "TokenBatch":
        """Rows [start, stop) as a batch of their own, host facts from this one's (no device read)."""
        first, last = sum(self.masked_per_row[:start]), sum(self.masked_per_row[:stop])
        return TokenBatch(
            self.lang, self.input_ids_BL[start:stop], self.attention_mask_BL[start:stop], self.labels_BL[start:stop],
            self.masked_N[first:last] - start * self.input_ids_BL.shape[1], self.masked_per_row[start:stop], self.real_per_row[start:stop],
        )
