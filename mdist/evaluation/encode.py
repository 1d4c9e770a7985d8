"""Run an encoder over sentences and keep every layer's token vectors, packed without padding.

Legend: N sentences, T tokens of all sentences together, K hidden states (embedding output + N
layers), D hidden width, B batch, L padded length.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mdist.errors import TeacherError
from mdist.teacher import check_teacher_dir, load_teacher_tokenizer


@dataclass
class TokenStates:
    """Every hidden state of every token of N sentences, in sentence order."""

    states_KTD: torch.Tensor
    lengths_N: torch.Tensor  # tokens per sentence, <s> and </s> included
    weights_T: torch.Tensor  # BERTScore weight without idf: 0 for <s> and </s>, 1 for every other token

    @property
    def num_layers(self) -> int:
        return self.states_KTD.shape[0] - 1

    def tokens(self, layers: list[int]) -> torch.Tensor:
        """[T, D] token vectors of a representation: the mean over its hidden states."""
        return self.states_KTD[layers].mean(dim=0)


def load_encoder(path: Path, device: str, role: str = "model") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hugging Face encoder directory (MLM head dropped) and its tokenizer; needs no mdist code inside.

    The directory is checked as a teacher is (config, whole weights, the model's own tokenizer), so
    that a bad one stops with one line naming it (`role`) rather than a traceback or a run on <unk>."""
    tokenizer = load_teacher_tokenizer(path, check_teacher_dir(path, role), role)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the dropped MLM head: expected, not news
    try:
        model = AutoModel.from_pretrained(str(path), add_pooling_layer=False)
    except Exception as err:  # transformers raises many types for weights that do not fit the config
        raise TeacherError(f"cannot load the {role} weights in '{path}': {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device).eval(), tokenizer


def max_tokens(model: PreTrainedModel, max_length: int) -> int:
    """Longest input the model takes: XLM-R positions start after the padding index, hence the 2."""
    return min(max_length, model.config.max_position_embeddings - 2)


@torch.no_grad()
def encode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sentences: list[str], batch_size: int, max_length: int) -> TokenStates:
    """Token vectors of all layers; batches are formed by length so that little compute goes to padding."""
    ids = tokenizer(sentences, truncation=True, max_length=max_tokens(model, max_length))["input_ids"]
    device = next(model.parameters()).device
    per_sentence: list[torch.Tensor] = [None] * len(ids)  # [K, L_i, D] each
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        padded = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt").to(device)
        hidden_KBLD = torch.stack(model(**padded, output_hidden_states=True).hidden_states).float()
        for b, i in enumerate(batch):
            per_sentence[i] = hidden_KBLD[:, b, : len(ids[i])]
    special = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])
    flat_ids_T = torch.tensor([token for sentence in ids for token in sentence])
    return TokenStates(
        states_KTD=torch.cat(per_sentence, dim=1),
        lengths_N=torch.tensor([len(sentence) for sentence in ids], device=device),
        weights_T=(~torch.isin(flat_ids_T, special)).float().to(device),
    )
