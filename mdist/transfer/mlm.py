"""The MLM term of task distillation read literally (thesis §3.3.6): L = ½·logit MSE + ½·MLM.

The student's MLM loss is taken on its own training batch, masked dynamically as in pre-training
(`mdist.data.masking`), through the MLM head the student was exported with. That head stays as
pre-trained (it is not part of any strategy's parameters) except that its decoder is the task
model's own word-embedding matrix where the model ties them, so a strategy that trains the
embeddings trains the decoder with them, as in distillation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForMaskedLM
from transformers.utils import logging as hf_logging

from mdist.data.masking import MaskingSpec, mask_tokens
from mdist.transfer.model import TaskModel
from mdist.transfer.tasks import Batch


class MaskedLMLoss(nn.Module):
    """The MLM loss of one task model's encoder, with the MLM head of the directory it was built from."""

    def __init__(self, model: TaskModel, tokenizer, seed: int):
        super().__init__()
        path = model.encoder.name_or_path
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            masked_lm = AutoModelForMaskedLM.from_pretrained(path)
        finally:
            hf_logging.set_verbosity(verbosity)
        if not hasattr(masked_lm, "lm_head"):
            raise ValueError(f"'{path}' has no MLM head (lm_head); the MLM form of task distillation needs one")
        device = next(model.parameters()).device
        self.head = masked_lm.lm_head.to(device).requires_grad_(False)
        if masked_lm.config.tie_word_embeddings:
            self.head.decoder.weight = model.encoder.embeddings.word_embeddings.weight
        self.spec = MaskingSpec.from_tokenizer(tokenizer, masked_lm.config.vocab_size)
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, model: TaskModel, batch: Batch) -> torch.Tensor:
        masked_BL, labels_BL = mask_tokens(batch.input_ids.cpu(), self.spec, self.generator)  # padding is special: never picked
        masked_BL, labels_BL = masked_BL.to(batch.input_ids.device), labels_BL.to(batch.input_ids.device)
        hidden_BLD = model.encoder(input_ids=masked_BL, attention_mask=batch.attention_mask).last_hidden_state
        picked = labels_BL != -100
        if not picked.any():  # nothing drawn in a tiny batch: no MLM signal this step
            return hidden_BLD.sum() * 0.0
        return F.cross_entropy(self.head(hidden_BLD[picked]).float(), labels_BL[picked])
