"""A task model: an encoder (student, teacher or baseline directory) with a task head.

Strategies add parts in place: fresh top layers (FREEZE +k) are appended to the encoder's own layer
list, adapters wrap each layer's output block, so the encoder's forward (masks, positions, SDPA)
runs them unchanged. Parameter names are those of `TaskModel.named_parameters()`:
`encoder.embeddings.*`, `encoder.encoder.layer.<i>.*` (adapters under `...output.adapter.*`),
`head.*`.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mdist.errors import DataError
from mdist.evaluation.encode import load_encoder
from mdist.transfer.adapters import insert_adapters, new_adapters
from mdist.transfer.tasks import Batch, Task, get_task

SPEC_FILE = "task_model.json"
WEIGHTS_FILE = "task_model.pt"


class SequenceHead(nn.Module):
    """XLM-R's classification head on `<s>`: dense, tanh, linear (thesis: W ∈ R^{labels×H} on [CLS])."""

    def __init__(self, hidden: int, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden_BLD: torch.Tensor, batch: Batch) -> torch.Tensor:
        x = self.dropout(torch.tanh(self.dense(self.dropout(hidden_BLD[:, 0]))))
        return self.out(x)


class TokenHead(nn.Module):
    """A linear tagger on every token (only first sub-tokens carry labels)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden_BLD: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.out(self.dropout(hidden_BLD))


class ChoiceHead(SequenceHead):
    """One score per (context, question, choice) sequence on `<s>`; rows regrouped to [B, C]."""

    def __init__(self, hidden: int, num_labels: int, dropout: float):
        super().__init__(hidden, 1, dropout)

    def forward(self, hidden_BLD: torch.Tensor, batch: Batch) -> torch.Tensor:
        return super().forward(hidden_BLD, batch).view(-1, batch.num_choices)


HEADS = {"sequence": SequenceHead, "token": TokenHead, "choice": ChoiceHead}


@dataclass(frozen=True)
class ModelSpec:
    """What was built on top of a base encoder directory; enough to rebuild a saved task model."""

    task: str
    base: str
    extra_layers: int = 0
    adapters: bool = False


class TaskModel(nn.Module):
    def __init__(self, encoder: PreTrainedModel, task: Task, extra_layers: int = 0, adapters: nn.ModuleList | None = None):
        super().__init__()
        config = encoder.config
        self.task = task
        self.encoder = encoder
        self.base_layers = len(encoder.encoder.layer)
        if extra_layers:
            layer_class = type(encoder.encoder.layer[0])
            fresh = [layer_class(config, layer_idx=self.base_layers + i) for i in range(extra_layers)]
            for layer in fresh:
                layer.apply(encoder._init_weights)
            encoder.encoder.layer.extend(fresh)
        if adapters is not None:
            insert_adapters(encoder.encoder.layer[: self.base_layers], adapters)
        self.head = HEADS[task.head](config.hidden_size, task.num_labels, config.hidden_dropout_prob)
        self.head.apply(encoder._init_weights)

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden_BLD = self.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        return self.head(hidden_BLD, batch)

    def adapters(self) -> nn.ModuleList:
        """The adapter modules inserted into this model's layers (empty without adapters)."""
        return nn.ModuleList(layer.output.adapter for layer in self.encoder.encoder.layer[: self.base_layers] if hasattr(layer.output, "adapter"))

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2), batch.labels.flatten(), ignore_index=-100)


def load_base(path: Path, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder of a model directory (student export, teacher, baseline) in training mode."""
    encoder, tokenizer = load_encoder(Path(path), device)
    return encoder.train(), tokenizer


def build_task_model(spec: ModelSpec, device: str, adapters: nn.ModuleList | None = None) -> tuple[TaskModel, PreTrainedTokenizerBase]:
    """The task model of `spec`; pass `adapters` to insert existing modules (shared by identity)."""
    encoder, tokenizer = load_base(Path(spec.base), device)
    if spec.adapters and adapters is None:
        adapters = new_adapters(len(encoder.encoder.layer), encoder.config.hidden_size)
    model = TaskModel(encoder, get_task(spec.task), spec.extra_layers, adapters if spec.adapters else None)
    return model.to(device), tokenizer


def save_task_model(model: TaskModel, spec: ModelSpec, out_dir: Path) -> Path:
    """Weights, then the spec, whose base encoder path is stored twice: relative to the spec file (the
    saved model and its base moved together) and absolute (the saved model moved alone)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
    base = Path(spec.base).resolve()
    record = {**asdict(spec), "base": str(base), "base_relative": os.path.relpath(base, out_dir.resolve())}
    (out_dir / SPEC_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _base_dir(record: dict, spec_file: Path) -> str:
    """The base encoder of a saved spec from any working directory: relative to the spec file first,
    then the absolute path (a spec of an older mdist has only the path as typed)."""
    candidates = [spec_file.parent / record.pop("base_relative")] if "base_relative" in record else []
    candidates.append(Path(record["base"]))
    found = next((path for path in candidates if path.is_dir()), None)
    if found is None:
        raise FileNotFoundError(f"{spec_file}: base model directory not found (tried {', '.join(repr(str(p)) for p in candidates)})")
    return str(found.resolve())


def load_task_model(model_dir: Path, device: str) -> tuple[TaskModel, PreTrainedTokenizerBase, ModelSpec]:
    """A task model saved by `mdist finetune --save-model` (e.g. the fine-tuned teacher of task distillation)."""
    spec_file = model_dir / SPEC_FILE
    if not spec_file.is_file():
        raise FileNotFoundError(f"'{spec_file}' does not exist (was '{model_dir}' written by 'mdist finetune --save-model'?)")
    try:
        record = json.loads(spec_file.read_text(encoding="utf-8"))
        base = _base_dir(record, spec_file)  # takes base_relative out of the record
        spec = ModelSpec(**{**record, "base": base})
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as err:
        raise DataError(f"{spec_file}: not a task model spec: {err}") from None
    model, tokenizer = build_task_model(spec, device)
    model.load_state_dict(torch.load(model_dir / WEIGHTS_FILE, map_location=device, weights_only=True))
    return model, tokenizer, spec
