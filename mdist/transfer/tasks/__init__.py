"""Downstream tasks of the transfer experiments (XNLI, PAN-X NER, XCOPA), looked up by name."""
from __future__ import annotations

from mdist.errors import ConfigError
from mdist.transfer.tasks.base import Batch, Task
from mdist.transfer.tasks.ner import NER, TaggedSentence
from mdist.transfer.tasks.xcopa import XCOPA, ChoiceExample
from mdist.transfer.tasks.xnli import XNLI, PairExample

TASKS: dict[str, Task] = {task.name: task for task in (XNLI(), NER(), XCOPA())}  # in the order of mdist.transfer.TASK_NAMES (tested)

__all__ = ["TASKS", "Batch", "ChoiceExample", "NER", "PairExample", "TaggedSentence", "Task", "XCOPA", "XNLI", "get_task"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    return TASKS[name]
