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

from mdist.errors import ConfigError, DataError, path_problem, require_file
from mdist.evaluation.encode import load_encoder
from mdist.transfer import HEAD_KINDS
from mdist.transfer.adapters import insert_adapters, new_adapters
from mdist.transfer.tasks import TASKS, Batch, Task, get_task

SPEC_FILE = "task_model.json"
WEIGHTS_FILE = "task_model.pt"
SPEC_TYPES = {"task": str, "base": str, "extra_layers": int, "adapters": bool, "head": str}


class SequenceHead(nn.Module):
    """A classifier on `<s>`. "dense-tanh": XLM-R's head in transformers (dense, tanh, linear);
    "linear": the one layer W ∈ R^{labels×H} on [CLS] that thesis §4.1 names."""

    def __init__(self, hidden: int, num_labels: int, dropout: float, kind: str = HEAD_KINDS[0]):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ConfigError(f"unknown head '{kind}' (known: {', '.join(HEAD_KINDS)})")
        self.dense = nn.Linear(hidden, hidden) if kind == "dense-tanh" else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden_BLD: torch.Tensor, batch: Batch) -> torch.Tensor:
        x = self.dropout(hidden_BLD[:, 0])
        if self.dense is not None:
            x = self.dropout(torch.tanh(self.dense(x)))
        return self.out(x)


class TokenHead(nn.Module):
    """A linear tagger on every token (which tokens carry labels is the task's encoding); one layer for every `kind`."""

    def __init__(self, hidden: int, num_labels: int, dropout: float, kind: str = HEAD_KINDS[0]):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden_BLD: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.out(self.dropout(hidden_BLD))


class ChoiceHead(SequenceHead):
    """One score per (context, question, choice) sequence on `<s>`; rows regrouped to [B, C]."""

    def __init__(self, hidden: int, num_labels: int, dropout: float, kind: str = HEAD_KINDS[0]):
        super().__init__(hidden, 1, dropout, kind)

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
    head: str = HEAD_KINDS[0]  # one of HEAD_KINDS; specs saved before the option read as the default


class TaskModel(nn.Module):
    def __init__(self, encoder: PreTrainedModel, task: Task, extra_layers: int = 0, adapters: nn.ModuleList | None = None,
                 head: str = HEAD_KINDS[0]):
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
        self.head = HEADS[task.head](config.hidden_size, task.num_labels, config.hidden_dropout_prob, head)
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
    model = TaskModel(encoder, get_task(spec.task), spec.extra_layers, adapters if spec.adapters else None, spec.head)
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


def read_spec(model_dir: Path) -> ModelSpec:
    """The spec of a task model directory, each field of the type a saved one has."""
    spec_file = model_dir / SPEC_FILE
    for path, want_dir in ((model_dir, True), (spec_file, False)):
        problem = path_problem(path, want_dir)
        if problem:
            raise FileNotFoundError(f"'{path}' {problem} (is '{model_dir}' a task model saved by 'mdist finetune --save-model'?)")
    try:
        record = json.loads(spec_file.read_text(encoding="utf-8"))
        base = _base_dir(record, spec_file)  # takes base_relative out of the record
        spec = ModelSpec(**{**record, "base": base})
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as err:
        raise DataError(f"{spec_file}: not a task model spec (was '{model_dir}' written by 'mdist finetune --save-model'?): {err}") from None
    problems = [f"{key} is not {kind.__name__}" for key, kind in SPEC_TYPES.items() if type(getattr(spec, key)) is not kind]
    if not problems:
        problems = [problem for bad, problem in ((spec.task not in TASKS, f"task '{spec.task}' unknown"),
                                                 (spec.extra_layers < 0, f"extra_layers {spec.extra_layers} < 0"),
                                                 (spec.head not in HEAD_KINDS, f"head '{spec.head}' unknown")) if bad]
    if problems:
        raise DataError(f"{spec_file}: not a task model spec: {'; '.join(problems)}")
    return spec


def task_weights(weights: Path, model: TaskModel, device: str) -> dict[str, torch.Tensor]:
    """The state dict in `weights`, checked against `model` (built from the spec beside it): a file cut
    short, or tensors that are not the spec's model's, stop with one line naming the file."""
    require_file(weights)
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a cut or foreign file
        raise DataError(f"{weights}: not a whole task model ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    if not isinstance(state, dict):
        raise DataError(f"{weights}: not a task model state dict (found {type(state).__name__})")
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & state.keys() if getattr(state[k], "shape", None) != expected[k].shape)
    found = [f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if keys]
    if found:
        raise DataError(f"{weights}: does not match {weights.parent / SPEC_FILE}: tensors {', '.join(found)}")
    return state


def load_task_model(model_dir: Path, device: str) -> tuple[TaskModel, PreTrainedTokenizerBase, ModelSpec]:
    """A task model saved by `mdist finetune --save-model` (e.g. the fine-tuned teacher of task distillation)."""
    spec = read_spec(model_dir)
    model, tokenizer = build_task_model(spec, device)
    model.load_state_dict(task_weights(model_dir / WEIGHTS_FILE, model, device))
    return model, tokenizer, spec
