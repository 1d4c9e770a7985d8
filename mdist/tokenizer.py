"""Sentencepiece tokenizers in the XLM-R layout, trained in-process (tests, demo, tiny teachers).

XLM-R's `sentencepiece.bpe.model` has <unk>=0, <s>=1, </s>=2; Hugging Face's XLMRobertaTokenizer
maps those onto the fairseq ids (<s>=0, <pad>=1, </s>=2, <unk>=3, pieces shifted by one, <mask>
last). A model trained with that layout and saved under that file name loads like the real one.
`XLMRobertaTokenizer(vocab_file=...)` silently ignores the file, so we always load from a directory.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from transformers import PreTrainedTokenizerBase, XLMRobertaTokenizer

SP_MODEL_NAME = "sentencepiece.bpe.model"


def train_xlmr_tokenizer(sentences: Iterable[str], vocab_size: int, out_dir: str | Path, model_max_length: int = 512) -> PreTrainedTokenizerBase:
    """Train a unigram sentencepiece model on `sentences` and return it as an XLM-R tokenizer saved in `out_dir`.

    `model_max_length` is the longest input the model takes (max positions − 2 for XLM-R); without
    it the tokenizer reports ~1e30 and tools that truncate by it (bert-score) fail.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=proto,
        vocab_size=vocab_size - 2,  # the HF tokenizer adds <pad> and <mask>
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    (out_dir / SP_MODEL_NAME).write_bytes(proto.getvalue())
    tokenizer = XLMRobertaTokenizer.from_pretrained(str(out_dir), model_max_length=model_max_length)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
