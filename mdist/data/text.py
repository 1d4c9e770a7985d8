"""In-memory per-language text source: small corpora (tests, demo, fine-tuning-sized runs).

Reads documents (blank-line separated, CC-100 style) from text files, tokenises and packs them once,
then serves Algorithm 1's per-language batches with fresh dynamic masking every step. The global
batch of a step is drawn and masked identically on every rank and each rank takes its slice, so a
run over W ranks sees exactly the sequences and masks of a 1-rank run with W× the batch.
Large corpora go through `mdist prep` shards instead.
"""
from __future__ import annotations

import logging

from pathlib import Path
from typing import Iterable

import torch

from mdist.data.batch import TokenBatch
from mdist.data.documents import SkipLog, read_documents
from mdist.data.masking import MaskingSpec, mask_tokens
from mdist.data.packing import pack
from mdist.errors import DataError

log = logging.getLogger(__name__)


def read_text_corpus(files_by_lang: dict[str, list[str]]) -> dict[str, list[str]]:
    """Documents per language from CC-100-style text files; skipped documents are reported, empty files are errors."""
    docs_by_lang: dict[str, list[str]] = {}
    for lang, paths in files_by_lang.items():
        docs_by_lang[lang] = []
        for path in paths:
            skips = SkipLog()
            found = [doc.text for doc in read_documents(Path(path), skips)]
            if skips.total:
                log.warning("%s: skipped %d document(s): %s", path, skips.total, skips.to_dict())
            if not found:
                raise DataError(f"{path}: empty text file (language '{lang}'), no document to train on")
            docs_by_lang[lang].extend(found)
    return docs_by_lang


class TextBatchSource:
    """Per-language packed sequences with epoch-wise shuffling, sliced by rank."""

    def __init__(self, sequences: dict[str, torch.Tensor], batch_size: int, masking: MaskingSpec, pad_id: int, seed: int, rank: int = 0, world_size: int = 1):
        self.sequences = sequences
        self.batch_size = batch_size
        self.masking = masking
        self.pad_id = pad_id
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.step = 0

    @classmethod
    def from_documents(cls, docs_by_lang: dict[str, Iterable[str]], tokenizer, seq_len: int, **kwargs) -> "TextBatchSource":
        sequences = {}
        for lang, docs in docs_by_lang.items():
            ids = [tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in docs]
            packed = pack(ids, seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
            if not packed:
                raise DataError(f"language '{lang}': no text to train on")
            sequences[lang] = torch.tensor(packed, dtype=torch.long)
        return cls(sequences, pad_id=tokenizer.pad_token_id, **kwargs)

    def _global_indices(self, lang: str, lang_index: int) -> torch.Tensor:
        """The step's global batch: consecutive slices of per-epoch permutations (wrapping epochs)."""
        n = len(self.sequences[lang])
        want = self.batch_size * self.world_size
        start = self.step * want
        picks = []
        while len(picks) < want:
            epoch, offset = divmod(start + len(picks), n)
            perm = torch.randperm(n, generator=_generator(self.seed, lang_index, epoch, 0))
            picks.extend(perm[offset : offset + want - len(picks)].tolist())
        return torch.tensor(picks)

    def next_batches(self) -> dict[str, TokenBatch]:
        """One equal-sized batch per language (Algorithm 1, step 1)."""
        batches = {}
        for lang_index, lang in enumerate(self.sequences):
            ids_BL = self.sequences[lang][self._global_indices(lang, lang_index)]
            gen = _generator(self.seed, lang_index, self.step, 1)
            masked_BL, labels_BL = mask_tokens(ids_BL, self.masking, gen)
            mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            batches[lang] = TokenBatch(lang, masked_BL[mine], (ids_BL[mine] != self.pad_id).long(), labels_BL[mine])
        self.step += 1
        return batches

    def state_dict(self) -> dict:
        return {"step": self.step}

    def close(self) -> None:
        """Nothing to release (the shard source stops its workers here)."""

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def _generator(*keys: int) -> torch.Generator:
    """A generator seeded from integer keys, identical on every rank and in every process."""
    seed = 0
    for key in keys:
        seed = (seed * 1_000_003 + key) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)
