"""XNLI: classify a premise/hypothesis pair as entailment, neutral or contradiction, from the <s> token."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mdist.errors import DataError
from mdist.transfer.tasks.base import Batch, Task, accuracy, pad_rows, read_lines, require_examples, whole_text_ids


@dataclass(frozen=True)
class PairExample:
    premise: str
    hypothesis: str
    label: int  # index into XNLI.label_names


class XNLI(Task):
    name = "xnli"
    head = "sequence"
    label_names = ("entailment", "neutral", "contradiction")
    metric = "accuracy"
    zero_shot_epochs = 10
    special_tokens = 4  # <s> premise </s></s> hypothesis </s>

    def read(self, path: Path, labels_path: Path | None = None) -> list[PairExample]:
        """`premise<TAB>hypothesis<TAB>label` lines; XTREME's "contradictory" is read as contradiction."""
        self.no_labels_file(labels_path)
        label_ids = {name: i for i, name in enumerate(self.label_names)} | {"contradictory": 2}
        examples = []
        for lineno, line in read_lines(path):
            if not line:
                continue
            columns = line.split("\t")
            if len(columns) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns (premise, hypothesis, label), found {len(columns)}")
            premise, hypothesis, label = columns
            if label not in label_ids:
                raise DataError(f"{path}:{lineno}: unknown label '{label}' (known: {', '.join(self.label_names)})")
            examples.append(PairExample(premise, hypothesis, label_ids[label]))
        return require_examples(path, examples)

    def encode(self, examples: list[PairExample], tokenizer, max_length: int) -> list[dict]:
        """`<s> premise </s></s> hypothesis </s>`, the longer side cut first when too long: the pairs are
        tokenized whole, and only those over `max_length` again with the tokenizer's truncation."""
        ids = whole_text_ids(tokenizer, [e.premise for e in examples], [e.hypothesis for e in examples])
        long = [i for i, row in enumerate(ids) if len(row) > max_length]
        if long:
            cut = tokenizer([examples[i].premise for i in long], [examples[i].hypothesis for i in long], truncation=True, max_length=max_length)["input_ids"]
            for i, row in zip(long, cut):
                ids[i] = row
        cut_rows = set(long)
        return [{"input_ids": row, "label": e.label, "truncated": i in cut_rows} for i, (row, e) in enumerate(zip(ids, examples))]

    def collate(self, features: list[dict], pad_id: int) -> Batch:
        ids, mask = pad_rows([f["input_ids"] for f in features], pad_id)
        return Batch(ids, mask, torch.tensor([f["label"] for f in features], dtype=torch.long))

    def predict(self, logits: torch.Tensor, batch: Batch) -> list[int]:
        """logits [B, K] → class ids."""
        return logits.argmax(-1).tolist()

    def score(self, examples: list[PairExample], predictions: list[int]) -> dict[str, float]:
        return accuracy([e.label for e in examples], predictions)
