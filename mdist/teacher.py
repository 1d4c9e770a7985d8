"""The frozen teacher: a local Hugging Face XLM-R-family directory, or a tiny random one for tests.

Loading validates the directory first so that a bad teacher gives one clear message instead of a
traceback from inside transformers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, XLMRobertaConfig, XLMRobertaForMaskedLM

from mdist.capture import ATTENTION_IMPLEMENTATION
from mdist.config import TeacherConfig
from mdist.errors import TeacherError, path_problem
from mdist.tokenizer import SP_MODEL_NAME, train_xlmr_tokenizer

SUPPORTED_MODEL_TYPES = ("xlm-roberta", "xlm-roberta-xl")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", SP_MODEL_NAME)
MIN_VOCAB_FILL = 0.9  # a model's own tokenizer fills its embedding table, bar a little padding (XLM-R XL: 250 002 of 250 880)


def read_teacher_config(path: Path) -> dict:
    """The config dict of an XLM-R-family model directory (no weights read)."""
    problem = path_problem(path, want_dir=True)
    if problem:
        raise TeacherError(f"teacher directory '{path}' {problem}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TeacherError(f"teacher directory '{path}' has no config.json (is it a Hugging Face model directory?)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TeacherError(f"teacher config '{config_file}' is not valid JSON: {err}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TeacherError(
            f"teacher '{path}' has model_type '{model_type}'; mdist distils XLM-R-family encoders "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return config


def check_teacher_dir(path: Path) -> dict:
    """Validate a teacher directory without loading weights; returns its config dict."""
    config = read_teacher_config(path)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise TeacherError(f"teacher directory '{path}' has no weights ({' / '.join(WEIGHT_FILES)})")
    return config


def teacher_shape(path: Path) -> dict:
    """The teacher's full config (transformers' defaults filled in) after `check_teacher_dir`; no weights read."""
    check_teacher_dir(path)
    try:
        return AutoConfig.from_pretrained(str(path)).to_dict()
    except Exception as err:  # transformers raises many types for a bad config
        raise TeacherError(f"cannot read the teacher config in '{path}': {type(err).__name__}: {err}") from None


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers raises many types for a broken tokenizer
        raise TeacherError(f"cannot load the tokenizer of '{path}': {type(err).__name__}: {err}") from None


def load_teacher_tokenizer(path: Path, config: dict | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of the teacher in `path`, refused when it cannot be the model's own.

    Without tokenizer files transformers falls back to a 5-token tokenizer that maps every word to
    <unk>; a run with it trains on nothing and still "succeeds", so it is an error here.
    """
    config = read_teacher_config(path) if config is None else config
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise TeacherError(f"teacher directory '{path}' has no tokenizer ({' / '.join(TOKENIZER_FILES)}); copy the model's tokenizer files into it")
    tokenizer = load_tokenizer(path)
    check_vocabulary(tokenizer, config.get("vocab_size", 0), f"teacher '{path}'")
    return tokenizer


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int, where: str) -> None:
    """Teacher and students share one vocabulary: the tokenizer must fill (almost all of) the embedding
    table and never index past it, and have the <mask> and <pad> that masking and padding use."""
    if len(tokenizer) > vocab_size:
        raise TeacherError(
            f"{where}: tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}; "
            "teacher and students must use the teacher's tokenizer"
        )
    if len(tokenizer) < MIN_VOCAB_FILL * vocab_size:
        raise TeacherError(
            f"{where}: tokenizer has only {len(tokenizer)} tokens for a vocabulary of {vocab_size}; "
            "it is not the model's own tokenizer (missing or wrong tokenizer files?)"
        )
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise TeacherError(f"{where}: tokenizer has no <mask> or <pad> token (not an XLM-R tokenizer)")


def load_teacher(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen, eval-mode teacher with Q/K capture from a local directory."""
    tokenizer = load_teacher_tokenizer(path, check_teacher_dir(path))
    try:
        model = AutoModelForMaskedLM.from_pretrained(str(path), attn_implementation=ATTENTION_IMPLEMENTATION)
    except Exception as err:
        raise TeacherError(f"cannot load the teacher weights in '{path}': {type(err).__name__}: {err}") from None
    return freeze(model), tokenizer


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    model.eval()
    model.requires_grad_(False)
    return model


def build_tiny_teacher(cfg: TeacherConfig, sentences: Iterable[str], out_dir: Path, seed: int) -> Path:
    """Write a tiny random XLM-R teacher (sentencepiece trained on `sentences`) to `out_dir`."""
    tokenizer = train_xlmr_tokenizer(sentences, cfg.tiny.vocab, out_dir, model_max_length=cfg.tiny.max_positions - 2)
    torch.manual_seed(seed)
    model_config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny.hidden,
        num_hidden_layers=cfg.tiny.layers,
        num_attention_heads=cfg.tiny.heads,
        intermediate_size=cfg.tiny.ffn,
        max_position_embeddings=cfg.tiny.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        type_vocab_size=1,
    )
    XLMRobertaForMaskedLM(model_config).save_pretrained(str(out_dir))
    return out_dir
