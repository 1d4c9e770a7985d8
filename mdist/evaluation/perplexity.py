"""MLM pseudo-perplexity: exp(mean cross-entropy at masked positions) under seeded BERT masking.

Every non-special token is chosen with probability 0.15; a chosen token becomes <mask> (80 %), a
uniformly random vocabulary id (10 %) or stays (10 %), as in BERT / Hugging Face's MLM collator.
All sequences are masked up front, in input order, from one generator seeded with `seed`, so the
score depends on the seed and the text but not on the batch size or device. Texts longer than the
model's window are cut into consecutive windows, each framed by <s> ... </s>, so no token is dropped.

The computation is `score_masked`: it takes the masked text (`MaskedText`, built once) and a function
giving a model's logits at the masked positions, so the same code scores a model directory (`mdist
eval perplexity`) and the students of a running distillation (`mdist.heldout`, every
`train.eval_every` steps).

Legend: B batch, L padded length, M masked positions in a batch, V vocabulary, D width.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mdist.errors import DataError
from mdist.evaluation.encode import max_tokens
from mdist.evaluation.texts import read_documents

MASK_PROBABILITY = 0.15
IGNORE = -100
DEFAULT_SEED = 0  # `mdist eval perplexity --seed` and held-out evaluation during training
DEFAULT_MAX_LENGTH = 512  # `--max-length`; the model's window applies too


def load_masked_lm(path: Path, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"'{path}' is not a Hugging Face model directory (no config.json)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForMaskedLM.from_pretrained(str(path))
    finally:
        hf_logging.set_verbosity(verbosity)
    if not hasattr(model, "lm_head"):
        raise DataError(f"'{path}' is a {type(model).__name__}; pseudo-perplexity needs an XLM-R-family masked LM (with lm_head)")
    return model.to(device).eval(), AutoTokenizer.from_pretrained(str(path))


def windows(tokenizer: PreTrainedTokenizerBase, texts: list[str], length: int) -> list[list[int]]:
    """Each text tokenised and cut into `<s> piece </s>` windows of at most `length` ids."""
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        for start in range(0, len(ids), length - 2):
            out.append([tokenizer.cls_token_id, *ids[start : start + length - 2], tokenizer.sep_token_id])
    return out


def mask_tokens(ids_L: torch.Tensor, special_L: torch.Tensor, mask_id: int, vocab_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets): targets hold the original id at chosen positions and IGNORE elsewhere."""
    chosen_L = (torch.rand(ids_L.shape, generator=generator) < MASK_PROBABILITY) & ~special_L
    action_L = torch.rand(ids_L.shape, generator=generator)
    random_L = torch.randint(vocab_size, ids_L.shape, generator=generator)
    inputs_L = torch.where(chosen_L & (action_L < 0.8), mask_id, ids_L)
    inputs_L = torch.where(chosen_L & (action_L >= 0.8) & (action_L < 0.9), random_L, inputs_L)
    return inputs_L, torch.where(chosen_L, ids_L, IGNORE)


def masked_sequences(tokenizer: PreTrainedTokenizerBase, sequences: list[list[int]], vocab_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    special_ids = torch.tensor(tokenizer.all_special_ids)
    out = []
    for ids in sequences:
        ids_L = torch.tensor(ids)
        out.append(mask_tokens(ids_L, torch.isin(ids_L, special_ids), tokenizer.mask_token_id, vocab_size, generator))
    return out


@dataclass
class MaskedText:
    """Texts cut into windows and masked once, in input order, from a generator seeded with `seed`:
    the fixed input of repeated evaluations (held-out perplexity during training scores the same
    masked positions at every step). Sorted by length so batches waste little on padding."""

    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # (inputs_L, targets_L) per window
    sequences: int
    pad_id: int
    seed: int

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, texts: list[str], vocab_size: int, length: int, seed: int) -> "MaskedText":
        sequences = windows(tokenizer, texts, length)
        pairs = masked_sequences(tokenizer, sequences, vocab_size, seed)
        pairs.sort(key=lambda pair: len(pair[0]))  # the masks are already drawn
        return cls(pairs, len(sequences), tokenizer.pad_token_id, seed)


MaskedLogits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs_BL, attention_BL, targets_BL) -> logits_MV


def hf_masked_logits(model: PreTrainedModel) -> MaskedLogits:
    """A Hugging Face XLM-R-family masked LM: the encoder, then the MLM head at masked positions only."""

    def logits(inputs_BL: torch.Tensor, attention_BL: torch.Tensor, targets_BL: torch.Tensor) -> torch.Tensor:
        hidden_BLD = model.base_model(input_ids=inputs_BL, attention_mask=attention_BL).last_hidden_state
        return model.lm_head(hidden_BLD[targets_BL != IGNORE])

    return logits


@contextmanager
def eval_mode(module: torch.nn.Module):
    """`module` in eval mode (no dropout) inside the block; every submodule's own mode restored after."""
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes:
            sub.training = training


@torch.no_grad()
def score_masked(logits_fn: MaskedLogits, masked: MaskedText, device: torch.device, batch_size: int = 16) -> dict:
    """{"pseudo_perplexity", "loss" (mean CE, nats), "masked_tokens", "sequences", "seed"} of a model,
    given as the function computing its vocabulary logits at the masked positions (row-major in B, L).
    Consumes no global random state; the caller puts the model in eval mode (`eval_mode`)."""
    total, count = 0.0, 0
    for start in range(0, len(masked.pairs), batch_size):
        batch = masked.pairs[start : start + batch_size]
        inputs_BL = torch.nn.utils.rnn.pad_sequence([i for i, _ in batch], batch_first=True, padding_value=masked.pad_id)
        targets_BL = torch.nn.utils.rnn.pad_sequence([t for _, t in batch], batch_first=True, padding_value=IGNORE)
        attention_BL = torch.nn.utils.rnn.pad_sequence([torch.ones(len(i), dtype=torch.long) for i, _ in batch], batch_first=True)
        chosen_BL = targets_BL != IGNORE
        if not chosen_BL.any():
            continue
        logits_MV = logits_fn(inputs_BL.to(device), attention_BL.to(device), targets_BL.to(device))
        total += F.cross_entropy(logits_MV.float(), targets_BL[chosen_BL].to(device), reduction="sum").item()
        count += int(chosen_BL.sum())
    if count == 0:
        raise DataError(f"{masked.sequences} sequences gave no masked token at {MASK_PROBABILITY:.0%}; give more text")
    return {"pseudo_perplexity": math.exp(total / count), "loss": total / count, "masked_tokens": count, "sequences": masked.sequences, "seed": masked.seed}


def pseudo_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], seed: int = DEFAULT_SEED, batch_size: int = 16, max_length: int = DEFAULT_MAX_LENGTH) -> dict:
    """{"pseudo_perplexity", "loss" (mean CE, nats), "masked_tokens", "sequences", "seed"}."""
    masked = MaskedText.build(tokenizer, texts, model.config.vocab_size, max_tokens(model, max_length), seed)
    with eval_mode(model):
        return score_masked(hf_masked_logits(model), masked, next(model.parameters()).device, batch_size)


def evaluate_perplexity(model_dir: Path, files: list[Path], seed: int = DEFAULT_SEED, batch_size: int = 16, max_length: int = DEFAULT_MAX_LENGTH, device: str = "cpu") -> dict:
    """Pseudo-perplexity of the masked LM in `model_dir` on text files and webdataset shards."""
    texts = read_documents(files)
    model, tokenizer = load_masked_lm(model_dir, device)
    try:
        result = pseudo_perplexity(model, tokenizer, texts, seed, batch_size, max_length)
    except DataError as err:
        raise DataError(f"{', '.join(map(str, files))}: {err}") from None
    return result | {"files": [str(path) for path in files]}
