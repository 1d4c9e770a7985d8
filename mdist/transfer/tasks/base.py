"""What every downstream task shares: the batch layout, the `Task` interface and strict line readers.

Legend: B examples in a batch, C choices per example, L padded length, K labels.
"""
from __future__ import annotations

import codecs
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mdist.errors import ConfigError, DataError, require_file

IGNORE = -100  # label of positions no loss or metric looks at (torch's cross-entropy default)
TRAILING_WHITESPACE = " \t\r\v\f"  # ASCII only: a no-break space at a line's end may be text


@dataclass
class Batch:
    """Model inputs and labels of one batch; choice tasks flatten their choices example-major."""

    input_ids: torch.Tensor  # [B, L] long; choice tasks [B*C, L], rows b*C .. b*C+C-1 are example b's choices
    attention_mask: torch.Tensor  # same shape, long 0/1
    labels: torch.Tensor  # sequence [B] class ids; token [B, L] tag ids, IGNORE off labelled sub-tokens; choice [B]
    num_choices: int | None = None  # C for choice tasks
    word_ids: torch.Tensor | None = None  # token tasks [B, L]: the word each token belongs to, -1 off words

    def to(self, device) -> Batch:
        word_ids = None if self.word_ids is None else self.word_ids.to(device)
        return replace(self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device), labels=self.labels.to(device),
                       word_ids=word_ids)


class Task(ABC):
    """A downstream task: how its files read, how examples become model inputs, how outputs are scored.

    The attributes are the thesis's setup (table 4.2) so that runners need no per-task switches.
    """

    name: str  # "xnli" | "ner" | "xcopa"
    head: str  # "sequence" | "token" | "choice"
    label_names: tuple[str, ...]
    metric: str  # "accuracy" | "f1"
    zero_shot_epochs: int
    few_shot_ks: tuple[int, ...] = (10, 100, 500)
    max_length: int = 128
    special_tokens: int  # <s>, </s> ... in every input row, whatever its text

    @property
    def min_length(self) -> int:
        """The shortest `max_length` that leaves a row any text: its special tokens and one token more."""
        return self.special_tokens + 1

    @property
    def num_labels(self) -> int:
        """Outputs of the head: one score per choice row for choice tasks."""
        return 1 if self.head == "choice" else len(self.label_names)

    @abstractmethod
    def read(self, path: Path, labels_path: Path | None = None) -> list:
        """Examples of a data file; DataError naming file and line on anything malformed."""

    def labels_file(self, path: Path, labels_path: Path | None = None) -> Path | None:
        """The separate labels file that `read(path, labels_path)` reads, if any (provenance)."""
        return labels_path

    @abstractmethod
    def encode(self, examples: list, tokenizer, max_length: int) -> list[dict]:
        """One feature (token ids, label, and `truncated`: whether anything was cut) per example, at most
        `max_length` (>= `min_length`) tokens per sequence."""

    @abstractmethod
    def collate(self, features: list[dict], pad_id: int) -> Batch:
        """Pad features into a batch."""

    @abstractmethod
    def predict(self, logits: torch.Tensor, batch: Batch) -> list:
        """One prediction per example of the batch, in the form `score` takes."""

    @abstractmethod
    def score(self, examples: list, predictions: list) -> dict[str, float]:
        """The task's metric over all examples, with "n" the number of examples."""

    def no_labels_file(self, labels_path: Path | None) -> None:
        """Tasks whose files carry their labels refuse a labels file rather than ignore it."""
        if labels_path is not None:
            raise ConfigError(f"{self.name} files carry their own labels; no labels file is read (got '{labels_path}')")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line of a transfer input file (TSV, PAN-X, JSONL, labels list), read
    alike for all of them: a UTF-8 byte order mark at the start is dropped, and so are the line end
    (LF or CRLF) and trailing whitespace; bad UTF-8 is reported with its line."""
    path = Path(path)
    require_file(path)
    raw_lines = path.read_bytes().removeprefix(codecs.BOM_UTF8).split(b"\n")
    if raw_lines[-1] == b"":
        raw_lines.pop()
    lines = []
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            lines.append((lineno, raw.decode("utf-8").rstrip(TRAILING_WHITESPACE)))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start} of the line") from None
    return lines


class _WholeTextWarning(logging.Filter):
    """Drops transformers' one warning that a tokenized text is longer than the model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token indices sequence length is longer than the specified maximum")


TOKENIZER_LOG, WHOLE_TEXT_WARNING = logging.getLogger("transformers.tokenization_utils_base"), _WholeTextWarning()


def whole_text_ids(tokenizer, texts: list[str], pairs: list[str] | None = None, add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of whole texts (pairs joined as the model takes them), for the task to cut to its limit
    itself. transformers warns that such a text is longer than the model will take; here that is
    false, so that warning (only that one) is silenced while these texts are tokenized."""
    TOKENIZER_LOG.addFilter(WHOLE_TEXT_WARNING)
    try:
        return tokenizer(texts, pairs, add_special_tokens=add_special_tokens)["input_ids"]
    finally:
        TOKENIZER_LOG.removeFilter(WHOLE_TEXT_WARNING)


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line; each must be one JSON object."""
    records = []
    for lineno, line in read_lines(path):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: bad JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, found {type(record).__name__}")
        records.append((lineno, record))
    return records


def require_examples(path: Path, examples: list) -> list:
    """An empty file is an error: it would train or score on nothing without a word."""
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] ids padded right with `pad_id` and their 0/1 attention mask."""
    width = max(map(len, rows))
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
    return ids, mask


def accuracy(golds: list[int], predictions: list[int]) -> dict[str, float]:
    """Share of examples predicted right."""
    check_lengths(golds, predictions)
    return {"accuracy": sum(g == p for g, p in zip(golds, predictions)) / len(golds), "n": len(golds)}


def check_lengths(examples: list, predictions: list) -> None:
    """Scores over a mismatched or empty set would be silently wrong."""
    if not examples or len(examples) != len(predictions):
        raise ValueError(f"need one prediction per example, got {len(predictions)} for {len(examples)} examples")
