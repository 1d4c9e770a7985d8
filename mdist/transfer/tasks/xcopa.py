"""XCOPA: pick the right choice for a context and question; trained on Social IQa and/or English COPA.

Each choice is scored from its own `<s> context </s></s> question </s></s> choice </s>` row, and the
scores of one example's choices compete in a softmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mdist.errors import DataError
from mdist.transfer.tasks.base import Batch, Task, accuracy, pad_rows, read_jsonl, read_lines, require_examples, whole_text_ids

COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}
SIQA_KEYS = ("context", "question", "answerA", "answerB", "answerC")
COPA_KEYS = ("premise", "choice1", "choice2", "question")


@dataclass(frozen=True)
class ChoiceExample:
    context: str
    question: str
    choices: tuple[str, ...]
    label: int  # index of the right choice


def copa_question(value: str) -> str:
    """COPA's question word as a question, rendered the same for every file (English train, Turkish test)."""
    if value not in COPA_QUESTIONS:
        raise ValueError(f"unknown question '{value}' (known: {', '.join(COPA_QUESTIONS)})")
    return COPA_QUESTIONS[value]


def _texts(record: dict, keys: tuple[str, ...], where: str) -> list[str]:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    not_text = [k for k in keys if not isinstance(record[k], str)]
    if not_text:
        raise DataError(f"{where}: {', '.join(not_text)} must be text")
    return [record[k] for k in keys]


def _fit(segments: list[list[int]], budget: int) -> list[list[int]]:
    """Cut segments from their ends, earliest segment first, until they fit: the context is the longest
    part and the one least needed to tell the choices apart."""
    excess = sum(map(len, segments)) - budget
    fitted = []
    for segment in segments:
        cut = min(max(excess, 0), len(segment))
        fitted.append(segment[: len(segment) - cut])
        excess -= cut
    return fitted


class XCOPA(Task):
    name = "xcopa"
    head = "choice"
    label_names = ()
    metric = "accuracy"
    zero_shot_epochs = 20
    few_shot_ks = (10, 50, 100)
    special_tokens = 6  # <s> context </s></s> question </s></s> choice </s>

    def read(self, path: Path, labels_path: Path | None = None) -> list[ChoiceExample]:
        """Social IQa (labels in `labels_path`, by default the sibling `<stem>-labels.lst`; 3 choices) or
        COPA/XCOPA jsonl (2 choices); the format is told by the first record's keys."""
        path = Path(path)
        records = require_examples(path, read_jsonl(path))
        first_line, first = records[0]
        if "context" in first:
            return self._read_siqa(path, records, self.siqa_labels(path, labels_path))
        if "premise" in first:
            self.no_labels_file(labels_path)
            return self._read_copa(path, records)
        raise DataError(f"{path}:{first_line}: neither a Social IQa record (context, ...) nor a COPA record (premise, ...)")

    @staticmethod
    def siqa_labels(path: Path, labels_path: Path | None = None) -> Path:
        """The labels file of a Social IQa file: `labels_path`, else the sibling `<stem>-labels.lst`."""
        return Path(labels_path) if labels_path else Path(path).with_name(f"{Path(path).stem}-labels.lst")

    def labels_file(self, path: Path, labels_path: Path | None = None) -> Path | None:
        labels = self.siqa_labels(path, labels_path)
        return labels if labels_path or labels.is_file() else None

    def _read_siqa(self, path: Path, records: list[tuple[int, dict]], labels_path: Path) -> list[ChoiceExample]:
        labels = []
        for lineno, line in read_lines(labels_path):
            if not line:
                continue
            if line not in ("1", "2", "3"):
                raise DataError(f"{labels_path}:{lineno}: label must be 1, 2 or 3, found '{line}'")
            labels.append(int(line) - 1)
        if len(labels) != len(records):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(records)} records in {path}")
        examples = []
        for (lineno, record), label in zip(records, labels):
            context, question, *choices = _texts(record, SIQA_KEYS, f"{path}:{lineno}")
            examples.append(ChoiceExample(context, question, tuple(choices), label))
        return examples

    def _read_copa(self, path: Path, records: list[tuple[int, dict]]) -> list[ChoiceExample]:
        examples = []
        for lineno, record in records:
            premise, *choices, question = _texts(record, COPA_KEYS, f"{path}:{lineno}")
            label = record.get("label")
            if type(label) is not int or label not in (0, 1):
                raise DataError(f"{path}:{lineno}: label must be 0 or 1, found {label!r}")
            try:
                question = copa_question(question)
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: {e}") from None
            examples.append(ChoiceExample(premise, question, tuple(choices), label))
        return examples

    def encode(self, examples: list[ChoiceExample], tokenizer, max_length: int) -> list[dict]:
        """C rows `<s> context </s></s> question </s></s> choice </s>` per example; too long rows lose
        context first."""
        pieces = iter(whole_text_ids(tokenizer, [t for e in examples for t in (e.context, e.question, *e.choices)], add_special_tokens=False))
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        features = []
        for example in examples:
            context, question = next(pieces), next(pieces)
            rows, truncated = [], False
            for _ in example.choices:
                segments = [context, question, next(pieces)]
                c, q, a = _fit(segments, max_length - self.special_tokens)
                rows.append([cls, *c, sep, sep, *q, sep, sep, *a, sep])
                truncated |= len(rows[-1]) < sum(map(len, segments)) + self.special_tokens
            features.append({"input_ids": rows, "label": example.label, "truncated": truncated})
        return features

    def collate(self, features: list[dict], pad_id: int) -> Batch:
        """Rows of all choices, example-major, padded to the longest row of the batch."""
        counts = {len(f["input_ids"]) for f in features}
        if len(counts) != 1:
            raise ValueError(f"the examples of a batch must have the same number of choices, found {sorted(counts)}")
        ids, mask = pad_rows([row for f in features for row in f["input_ids"]], pad_id)
        return Batch(ids, mask, torch.tensor([f["label"] for f in features], dtype=torch.long), num_choices=counts.pop())

    def predict(self, logits: torch.Tensor, batch: Batch) -> list[int]:
        """logits [B, C] → index of the best-scored choice."""
        return logits.argmax(-1).tolist()

    def score(self, examples: list[ChoiceExample], predictions: list[int]) -> dict[str, float]:
        return accuracy([e.label for e in examples], predictions)
