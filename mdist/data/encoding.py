"""Documents → teacher token ids (no special tokens), fast.

The Hugging Face XLM-R tokenizer encodes ~0.2 M tokens/s on one core; the sentencepiece model it is
built from does ~1.5 M. When the tokenizer ships its `sentencepiece.bpe.model` and the fairseq id
layout (piece id + 1, sentencepiece <unk> → the tokenizer's <unk>) reproduces it on a probe of mixed
scripts, documents go through sentencepiece directly; otherwise through the tokenizer itself.
Two differences, both towards what XLM-R was pre-trained on (fairseq data made with sentencepiece):
literal "<s>" or "<mask>" in web text stays text, and where two segmentations score exactly the same
(rare: runs of one character, digit groups) sentencepiece's choice is taken.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import sentencepiece as spm

PROBE = [
    "Hello world, this is a test of 123 tokens.",
    "İnsan hakları evrensel beyannamesi; ÖNSÖZ ve ğüşıöç.",
    "数字と記号 !? «quotes» — dashes… and emoji 🙂",
    "  leading,   inner   and trailing spaces  \n new line\ttab ",
]


class DocumentEncoder:
    """Callable: list of texts → list of token-id lists. `fingerprint` names the exact tokenizer."""

    def __init__(self, tokenizer, threads: int = 1):
        self.tokenizer = tokenizer
        self.threads = threads  # 1 in loader workers (they are the parallelism); all cores in prep
        self.unk_id = tokenizer.unk_token_id
        model_file = Path(getattr(tokenizer, "vocab_file", None) or "")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file)) if model_file.is_file() else None
        if self.sp is not None and self._sentencepiece(PROBE) != self._hugging_face(PROBE):
            self.sp = None
        definition = model_file.read_bytes() if self.sp is not None else tokenizer.backend_tokenizer.to_str().encode()
        self.fingerprint = hashlib.sha256(definition).hexdigest()

    def __call__(self, texts: list[str]) -> list[list[int]]:
        return self._sentencepiece(texts) if self.sp is not None else self._hugging_face(texts)

    def _sentencepiece(self, texts: list[str]) -> list[list[int]]:
        unk = self.unk_id
        return [[i + 1 if i else unk for i in ids] for ids in self.sp.encode(texts, num_threads=self.threads)]

    def _hugging_face(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
