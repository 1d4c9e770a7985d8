"""Packing documents into fixed-length sequences the XLM-R way.

Documents are tokenised without special tokens and concatenated into one stream with </s> between
documents (fairseq's `complete_doc`-free "full sentences" mode); the stream is cut into chunks of
seq_len − 2 tokens, each wrapped as <s> chunk </s>. A short final chunk is padded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator


@dataclass
class Packer:
    """Stateful packer: feed token lists of documents, take out full sequences. Resumable via `buffer`."""

    seq_len: int
    cls_id: int
    sep_id: int
    pad_id: int
    buffer: list[int] = field(default_factory=list)

    @property
    def body(self) -> int:
        return self.seq_len - 2

    def add(self, doc_ids: list[int]) -> Iterator[list[int]]:
        if not doc_ids:
            return
        if self.buffer:
            self.buffer.append(self.sep_id)
        self.buffer.extend(doc_ids)
        while len(self.buffer) >= self.body:
            chunk, self.buffer = self.buffer[: self.body], self.buffer[self.body :]
            yield [self.cls_id, *chunk, self.sep_id]

    def flush(self) -> Iterator[list[int]]:
        if self.buffer:
            chunk, self.buffer = self.buffer, []
            yield [self.cls_id, *chunk, self.sep_id] + [self.pad_id] * (self.body - len(chunk))


def pack(docs: Iterable[list[int]], seq_len: int, cls_id: int, sep_id: int, pad_id: int) -> list[list[int]]:
    packer = Packer(seq_len, cls_id, sep_id, pad_id)
    out: list[list[int]] = []
    for doc in docs:
        out.extend(packer.add(doc))
    out.extend(packer.flush())
    return out
