"""PAN-X (WikiANN) named entities, scored by span F1.

Two readings of "the individual token representation and its corresponding label" (thesis §4.1):
"first" (default): each word's tag on its first sub-token, predicted there, scored over words;
"all": every sub-token carries its word's tag (B- included), scored over sub-tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from seqeval.metrics import f1_score, precision_score, recall_score

from mdist.errors import ConfigError, DataError
from mdist.transfer import SUB_TOKEN_LABELS
from mdist.transfer.tasks.base import IGNORE, Batch, Task, check_lengths, pad_rows, read_lines, require_examples, whole_text_ids


@dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]  # one of NER.label_names per word


class NER(Task):
    name = "ner"
    head = "token"
    label_names = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
    metric = "f1"
    zero_shot_epochs = 20
    special_tokens = 2  # <s> words </s>

    def __init__(self, sub_token_labels: str = SUB_TOKEN_LABELS[0]):
        if sub_token_labels not in SUB_TOKEN_LABELS:
            raise ConfigError(f"unknown sub-token labelling '{sub_token_labels}' (known: {', '.join(SUB_TOKEN_LABELS)})")
        self.sub_token_labels = sub_token_labels

    def read(self, path: Path, labels_path: Path | None = None) -> list[TaggedSentence]:
        """`token<TAB>tag` lines, sentences separated by one or more blank lines."""
        self.no_labels_file(labels_path)
        sentences, words, tags = [], [], []
        for lineno, line in [*read_lines(path), (0, "")]:  # the blank sentinel ends the last sentence
            if not line:
                if words:
                    sentences.append(TaggedSentence(tuple(words), tuple(tags)))
                    words, tags = [], []
                continue
            columns = line.split("\t")
            if len(columns) != 2:
                raise DataError(f"{path}:{lineno}: expected 2 tab-separated columns (token, tag), found {len(columns)}")
            if columns[1] not in self.label_names:
                raise DataError(f"{path}:{lineno}: unknown tag '{columns[1]}' (known: {', '.join(self.label_names)})")
            words.append(columns[0])
            tags.append(columns[1])
        return require_examples(path, sentences)

    def encode(self, examples: list[TaggedSentence], tokenizer, max_length: int) -> list[dict]:
        """`<s> words </s>` with each word's tag on its first sub-token and IGNORE elsewhere ("all":
        on every sub-token), and the word index of every token.

        Words are tokenized one by one (as `is_split_into_words` does for XLM-R) so that a word the
        tokenizer reduces to nothing (a zero-width space) still gets a token, <unk>, and the tags stay
        aligned with the words. Truncation keeps the words whose first sub-token fits.
        """
        tag_ids = {tag: i for i, tag in enumerate(self.label_names)}
        pieces = iter(whole_text_ids(tokenizer, [w for e in examples for w in e.words], add_special_tokens=False))
        budget = max_length - self.special_tokens
        features = []
        for example in examples:
            ids, labels, words = [], [], []
            for word, tag in enumerate(example.tags):
                word_pieces = next(pieces) or [tokenizer.unk_token_id]
                ids += word_pieces
                rest = tag_ids[tag] if self.sub_token_labels == "all" else IGNORE
                labels += [tag_ids[tag]] + [rest] * (len(word_pieces) - 1)
                words += [word] * len(word_pieces)
            features.append({
                "input_ids": [tokenizer.cls_token_id, *ids[:budget], tokenizer.sep_token_id],
                "labels": [IGNORE, *labels[:budget], IGNORE],
                "word_ids": [-1, *words[:budget], -1],
                "truncated": len(ids) > budget,
            })
        return features

    def collate(self, features: list[dict], pad_id: int) -> Batch:
        ids, mask = pad_rows([f["input_ids"] for f in features], pad_id)
        labels, _ = pad_rows([f["labels"] for f in features], IGNORE)
        word_ids, _ = pad_rows([f["word_ids"] for f in features], -1)
        return Batch(ids, mask, labels, word_ids=word_ids)

    def predict(self, logits: torch.Tensor, batch: Batch) -> list[list]:
        """logits [B, L, K] → per example the tags of its kept words, read at their first sub-tokens
        ("all": per kept word the list of its sub-tokens' tags)."""
        tags_BL = logits.argmax(-1)
        if self.sub_token_labels == "first":
            first_BL = batch.labels != IGNORE
            return [[self.label_names[t] for t in tags[first].tolist()] for tags, first in zip(tags_BL, first_BL)]
        predictions = []
        for tags, words in zip(tags_BL.tolist(), batch.word_ids.tolist()):
            per_word: list[list[str]] = []
            for tag, word in zip(tags, words):
                if word >= 0:
                    if word == len(per_word):
                        per_word.append([])
                    per_word[word].append(self.label_names[tag])
            predictions.append(per_word)
        return predictions

    def score(self, examples: list[TaggedSentence], predictions: list[list]) -> dict[str, float]:
        """Span F1 (seqeval, default mode) over whole sentences: words cut by truncation count as "O"
        ("all": over sub-tokens, each kept sub-token against its word's tag; a cut word, whose pieces
        are no longer known, as one sub-token)."""
        check_lengths(examples, predictions)
        gold, predicted, truncated = [], [], 0
        for example, tags in zip(examples, predictions):
            missing = len(example.tags) - len(tags)
            if missing < 0:
                raise ValueError(f"{len(tags)} predicted tags for a sentence of {len(example.tags)} words")
            if self.sub_token_labels == "all":
                gold.append([tag for tag, pieces in zip(example.tags, [*tags, *[["O"]] * missing]) for _ in pieces])
                predicted.append([piece for pieces in tags for piece in pieces] + ["O"] * missing)
            else:
                gold.append(list(example.tags))
                predicted.append([*tags, *["O"] * missing])
            truncated += missing
        return {
            "f1": float(f1_score(gold, predicted, zero_division=0)),
            "precision": float(precision_score(gold, predicted, zero_division=0)),
            "recall": float(recall_score(gold, predicted, zero_division=0)),
            "n": len(examples),
            "truncated_words": truncated,
        }
