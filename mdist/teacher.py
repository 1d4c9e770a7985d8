"""The frozen teacher: a local Hugging Face XLM-R-family directory, or a tiny random one for tests.

Loading validates the directory first so that a bad teacher gives one clear message instead of a
traceback from inside transformers. The same checks serve every model directory mdist reads (students,
baselines, fine-tuning inputs): `role` names the directory in the message.
"""
from __future__ import annotations

import json
import zipfile
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


def read_teacher_config(path: Path, role: str = "teacher") -> dict:
    """The config dict of an XLM-R-family model directory (no weights read)."""
    problem = path_problem(path, want_dir=True)
    if problem:
        raise TeacherError(f"{role} directory '{path}' {problem}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TeacherError(f"{role} directory '{path}' has no config.json (is it a Hugging Face model directory?)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TeacherError(f"{role} config '{config_file}' is not valid JSON: {err}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TeacherError(
            f"{role} '{path}' has model_type '{model_type}'; mdist distils XLM-R-family encoders "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return config


def check_teacher_dir(path: Path, role: str = "teacher") -> dict:
    """Validate a model directory (the teacher by default) without loading weights: config, and the
    weights transformers would load present and whole; returns its config dict."""
    config = read_teacher_config(path, role)
    for file in weight_files(path, role):
        problem = weights_problem(file)
        if problem:
            raise TeacherError(f"{role} weights '{file}' {problem}")
    return config


def weight_files(path: Path, role: str = "teacher") -> list[Path]:
    """The files holding a model directory's weights, as transformers picks them (the first of
    WEIGHT_FILES present): one file, or the shards an `.index.json` names (each must exist)."""
    weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise TeacherError(f"{role} directory '{path}' has no weights ({' / '.join(WEIGHT_FILES)})")
    if not weights.name.endswith(".index.json"):
        return [weights]
    try:
        names = sorted(set(json.loads(weights.read_text(encoding="utf-8"))["weight_map"].values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise TeacherError(f"{role} weights index '{weights}' is not a weights index ({type(err).__name__}: {err})") from None
    missing = [name for name in names if not (weights.parent / str(name)).is_file()]
    if missing:
        raise TeacherError(f"{role} weights index '{weights}' names missing shard(s) {', '.join(map(str, missing[:3]))}")
    return [weights.parent / name for name in names]


def weights_problem(file: Path) -> str | None:
    """Why a weights file cannot be whole, read from its header alone: a safetensors file shorter than its
    header says (a copy cut off), a PyTorch zip archive without its end (torch.load's traceback)."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if file.suffix == ".safetensors":
            header_size = int.from_bytes(head, "little") if len(head) == 8 else size
            if 8 + header_size > size:
                return f"is truncated ({size} bytes, not even its safetensors header)"
            try:
                header = json.loads(f.read(header_size))
                end = max((t["data_offsets"][1] for key, t in header.items() if key != "__metadata__"), default=0)
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, IndexError, ValueError):
                return "has no readable safetensors header"
            expected = 8 + header_size + end
            return f"is truncated ({size} of {expected} bytes)" if size < expected else None
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(file):
        return f"is truncated ({size} bytes, the end of its zip archive is missing)"
    return None


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


def load_teacher_tokenizer(path: Path, config: dict | None = None, role: str = "teacher") -> PreTrainedTokenizerBase:
    """The tokenizer of the model (the teacher by default) in `path`, refused when it cannot be the model's own.

    Without tokenizer files transformers falls back to a 5-token tokenizer that maps every word to
    <unk>; a run with it trains on nothing and still "succeeds", so it is an error here.
    """
    config = read_teacher_config(path, role) if config is None else config
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise TeacherError(f"{role} directory '{path}' has no tokenizer ({' / '.join(TOKENIZER_FILES)}); copy the model's tokenizer files into it")
    tokenizer = load_tokenizer(path)
    check_vocabulary(tokenizer, config.get("vocab_size", 0), f"{role} '{path}'")
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
