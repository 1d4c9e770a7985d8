"""One transfer run: fine-tune on source-language data with a strategy, evaluate on the target
language (zero-shot), then optionally continue on k target examples (few-shot) per k.

Settings default to the thesis's table 4.2 and §4.2.2–4.2.3: zero-shot batch 64, AdamW, lr 2e-5
(full / SFT) or 1e-4 (parameter-efficient), weight decay 0.05, 10 % linear warm-up, 10 / 20 / 20
epochs (XNLI / NER / XCOPA); few-shot batch 32, lr 2e-5, 50 epochs. Writes to the output directory,
in the order `mdist.transfer.outputs` gives: with `save_model` the evaluated task model and one per k,
then `result.json`.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mdist.errors import ConfigError
from mdist.evaluation.encode import max_tokens
from mdist.transfer import HEAD_KINDS, SCHEDULES, SUB_TOKEN_LABELS, TASK_TEACHER_LOSSES
from mdist.transfer.mlm import MaskedLMLoss
from mdist.transfer.model import ModelSpec, TaskModel, build_task_model, load_task_model, save_task_model
from mdist.transfer.outputs import RESULT_FILE, clear_earlier, input_record, model_dir_name, write_result
from mdist.transfer.shots import nested_shots
from mdist.transfer.strategies import TransferStrategy, get_strategy
from mdist.transfer.tasks import NER, Task, get_task
from mdist.transfer.train import FitSettings, fit, predict

FULL_LR, EFFICIENT_LR = 2e-5, 1e-4
TRAIN_SCORE_LIMIT = 1000  # training examples re-scored to show that the task was learnt
CUT_WARNING_SHARE = 0.05  # more than this share of a set's examples cut to the length limit is said in a warning line
UPPER_BOUNDS = {  # sane upper bounds of the numeric options: a batch, a length, a step size, numpy's seed range
    "batch_size": 65536, "few_shot_batch_size": 65536, "max_length": 65536, "epochs": 10**6, "few_shot_epochs": 10**6,
    "lr": 1.0, "few_shot_lr": 1.0, "seed": 2**32 - 1,
}


@dataclass
class TransferConfig:
    task: str
    strategy: str
    src_model: Path
    trg_model: Path
    train: Path
    eval: Path
    out: Path
    src_lang: str = "en"
    trg_lang: str = "xx"
    label: str = ""
    train_labels: Path | None = None
    eval_labels: Path | None = None
    train_limit: int | None = None
    eval_limit: int | None = None
    epochs: int | None = None  # None: the task's thesis value
    batch_size: int = 64
    lr: float | None = None  # None: 2e-5 full / 1e-4 parameter-efficient
    weight_decay: float = 0.05
    warmup: float = 0.1
    max_length: int = 128
    seed: int = 42
    shots: list[int] = field(default_factory=list)
    shots_file: Path | None = None
    shots_labels: Path | None = None
    few_shot_epochs: int = 50
    few_shot_batch_size: int = 32
    few_shot_lr: float = 2e-5
    task_teacher: Path | None = None
    save_model: bool = False
    device: str = "cpu"
    distillation_run: Path | None = None
    distillation_mlflow_run_id: str | None = None
    # readings of the thesis where it is ambiguous; the first value of each choice tuple is the default (README)
    head: str = HEAD_KINDS[0]
    ner_labels: str = SUB_TOKEN_LABELS[0]
    few_shot_schedule: str = SCHEDULES[0]
    task_teacher_loss: str = TASK_TEACHER_LOSSES[0]

    def validate(self) -> None:
        """Every numeric option within its bounds (upper ones: UPPER_BOUNDS), before any file is read."""
        for key in ("batch_size", "few_shot_batch_size", "few_shot_epochs", "max_length"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        for key in ("epochs", "train_limit", "eval_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        for key in ("lr", "few_shot_lr"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise ConfigError(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}")
        for key, high in UPPER_BOUNDS.items():
            if getattr(self, key) is not None and not getattr(self, key) <= high:
                raise ConfigError(f"--{key.replace('_', '-')} must be <= {high}, got {getattr(self, key)}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        task = get_task(self.task)
        if self.max_length < task.min_length:
            raise ConfigError(f"--max-length {self.max_length} leaves {task.name} inputs no text: {task.special_tokens} special tokens plus at least one token, --max-length >= {task.min_length}")
        if not 0 <= self.weight_decay < 1 or not 0 <= self.warmup <= 1:
            raise ConfigError("--weight-decay must be in [0, 1) and --warmup in [0, 1]")
        if any(k < 1 for k in self.shots) or len(set(self.shots)) != len(self.shots):
            raise ConfigError(f"--shots must be different positive counts, got {self.shots}")
        if self.shots and self.shots_file is None:
            raise ConfigError("--shots needs --shots-file (labelled target-language examples)")
        for key, known in (("head", HEAD_KINDS), ("ner_labels", SUB_TOKEN_LABELS), ("few_shot_schedule", SCHEDULES), ("task_teacher_loss", TASK_TEACHER_LOSSES)):
            if getattr(self, key) not in known:
                raise ConfigError(f"--{key.replace('_', '-')} must be one of {', '.join(known)}, got '{getattr(self, key)}'")
        if self.ner_labels != SUB_TOKEN_LABELS[0] and self.task != "ner":
            raise ConfigError(f"--ner-labels applies to --task ner only, not {self.task}")
        if self.task_teacher_loss != TASK_TEACHER_LOSSES[0] and self.task_teacher is None:
            raise ConfigError("--task-teacher-loss needs --task-teacher")


@dataclass
class Models:
    """The task models of one strategy: those that train, the one evaluated, and the SFT mirror."""

    trained: list[TaskModel]
    evaluated: TaskModel
    tokenizers: dict[str, object]
    mirror: list[tuple[nn.Parameter, nn.Parameter]]


def select_trainable(model: TaskModel, strategy: TransferStrategy) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(strategy.trains_parameter(name, model.base_layers))


def trainable_names(model: TaskModel) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def _same_architecture(src: TaskModel, trg: TaskModel) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
    """Parameters of the two models by name; they must match one to one for anything to move."""
    src_params, trg_params = dict(src.named_parameters()), dict(trg.named_parameters())
    if src_params.keys() != trg_params.keys() or any(src_params[n].shape != trg_params[n].shape for n in src_params):
        raise ConfigError("source and target students differ in architecture; this strategy moves parameters between them")
    return {name: (src_params[name], trg_params[name]) for name in src_params}


def tie(target: nn.Module, source: nn.Module, names: list[str]) -> None:
    """Make `target`'s parameters `names` the very tensors of `source` (JOINT: one shared set)."""
    for name in names:
        module, _, attr = name.rpartition(".")
        setattr(target.get_submodule(module), attr, source.get_parameter(name))


def move(source: TaskModel, target: TaskModel, names: list[str]) -> None:
    """Copy the trained parameters `names` of the source student onto the target student."""
    pairs = _same_architecture(source, target)
    with torch.no_grad():
        for name in names:
            pairs[name][1].copy_(pairs[name][0])


def build_models(cfg: TransferConfig, strategy: TransferStrategy) -> Models:
    def build(path: Path, adapters: nn.ModuleList | None = None):
        torch.manual_seed(cfg.seed)  # the same fresh head / layers / adapters for every student
        return build_task_model(ModelSpec(cfg.task, str(path), strategy.extra_layers, strategy.adapters, cfg.head), cfg.device, adapters)

    if strategy.trains == "trg":
        trg, tokenizer = build(cfg.trg_model)
        select_trainable(trg, strategy)
        return Models([trg], trg, {"train": tokenizer, "eval": tokenizer}, [])
    src, src_tokenizer = build(cfg.src_model)
    select_trainable(src, strategy)
    if strategy.evaluates == "src":
        return Models([src], src, {"train": src_tokenizer, "eval": src_tokenizer}, [])
    trg, trg_tokenizer = build(cfg.trg_model, src.adapters() if strategy.trains == "joint" and strategy.adapters else None)
    tokenizers = {"train": src_tokenizer, "eval": trg_tokenizer}
    pairs = _same_architecture(src, trg)
    if strategy.trains == "joint":
        if src_tokenizer.get_vocab() != trg_tokenizer.get_vocab():
            raise ConfigError(f"{strategy.name} feeds one batch to both students; '{cfg.src_model}' and '{cfg.trg_model}' have different tokenizers")
        trg.head = src.head
        tie(trg, src, [n for n in trainable_names(src) if not n.startswith("head.") and ".adapter." not in n])
        select_trainable(trg, strategy)
        return Models([src, trg], trg, tokenizers, [])
    trg.requires_grad_(False)
    if strategy.mirror:  # SFT: the head is one module; encoder updates are mirrored (embeddings stay frozen)
        trg.head = src.head
        mirror = [pairs[n] for n in trainable_names(src) if not n.startswith("head.")]
        return Models([src], trg, tokenizers, mirror)
    return Models([src], trg, tokenizers, [])


def train_and_transfer(models: Models, strategy: TransferStrategy, task: Task, features: list[dict], pad_id: int,
                       settings: FitSettings, device: str, teacher: TaskModel | None = None, mlm: Sequence[nn.Module] = ()) -> tuple[dict, list[str]]:
    """Train on the source-language features, then move what trained onto the target student where the
    strategy says so; returns the fit summary and the names of the moved parameters."""
    fitted = fit(models.trained, task, features, pad_id, settings, device, f"{task.name} {strategy.name}", teacher, models.mirror, mlm)
    moved = trainable_names(models.trained[0]) if strategy.moves else []
    if moved:
        move(models.trained[0], models.evaluated, moved)
    return fitted, moved


def _examples(task: Task, path: Path, labels: Path | None, limit: int | None) -> list:
    examples = task.read(path, labels)
    return examples[:limit] if limit else examples


def applied_length(task: Task, models: list[TaskModel], max_length: int) -> int:
    """The length limit every input is cut to: `max_length` or the shortest position limit of the models
    that read the inputs, whichever is less; a model too short for the task's rows is refused."""
    limits = {m.encoder.config.name_or_path: max_tokens(m.encoder, max_length) for m in models}
    name = min(limits, key=limits.get)
    if limits[name] < task.min_length:
        raise ConfigError(f"'{name}' takes at most {limits[name]} tokens (its position limit); {task.name} inputs need at least {task.min_length}")
    return limits[name]


def encode_counting_cuts(task: Task, examples: list, tokenizer, limit: int, what: str) -> tuple[list[dict], dict[str, int]]:
    """The examples' features and how many of them were cut to `limit`; a warning line names the `what`
    set when that is more than CUT_WARNING_SHARE of it."""
    features = task.encode(examples, tokenizer, limit)
    count = sum(f["truncated"] for f in features)
    if count > CUT_WARNING_SHARE * len(features):
        print(f"warning: {count} of {len(features)} {task.name} {what} examples ({count / len(features):.1%}) were cut to {limit} tokens", file=sys.stderr)
    return features, {"cut": count, "of": len(features)}


def _score(task: Task, model: TaskModel, examples: list, features: list[dict], tokenizer, cfg: TransferConfig, desc: str) -> dict:
    predictions = predict(model, task, features, tokenizer.pad_token_id, cfg.batch_size, cfg.device, desc)
    return task.score(examples, predictions)


def run_transfer(cfg: TransferConfig) -> dict:
    """Fine-tune, evaluate zero-shot (and few-shot); write and return the result."""
    started = time.perf_counter()
    cfg.validate()
    task, strategy = get_task(cfg.task), get_strategy(cfg.strategy)
    if cfg.task == "ner":
        task = NER(cfg.ner_labels)
    train_examples = _examples(task, cfg.train, cfg.train_labels, cfg.train_limit)
    eval_examples = _examples(task, cfg.eval, cfg.eval_labels, cfg.eval_limit)
    shot_pool = _examples(task, cfg.shots_file, cfg.shots_labels, None) if cfg.shots else []
    if cfg.shots and max(cfg.shots) > len(shot_pool):
        raise ConfigError(f"--shots {max(cfg.shots)} asks for more examples than '{cfg.shots_file}' has ({len(shot_pool)})")
    models = build_models(cfg, strategy)
    train_tokenizer = models.tokenizers["train"]
    teacher = None
    if cfg.task_teacher is not None:
        teacher, teacher_tokenizer, teacher_spec = load_task_model(cfg.task_teacher, cfg.device)
        if teacher_spec.task != cfg.task:
            raise ConfigError(f"--task-teacher '{cfg.task_teacher}' was fine-tuned on {teacher_spec.task}, not {cfg.task}")
        if teacher_tokenizer.get_vocab() != train_tokenizer.get_vocab():
            raise ConfigError(f"--task-teacher '{cfg.task_teacher}' tokenizes differently from the students; it must be their teacher")
        teacher.eval().requires_grad_(False)
    mlm = [MaskedLMLoss(model, train_tokenizer, cfg.seed) for model in models.trained] if cfg.task_teacher_loss == "mlm" else []
    settings = FitSettings(
        epochs=cfg.epochs or task.zero_shot_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr or (EFFICIENT_LR if strategy.parameter_efficient else FULL_LR),
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        seed=cfg.seed,
    )
    limit = applied_length(task, [*models.trained, models.evaluated, *([teacher] if teacher is not None else [])], cfg.max_length)
    eval_tokenizer, cut = models.tokenizers["eval"], {"few_shot": {}}
    features, cut["train"] = encode_counting_cuts(task, train_examples, train_tokenizer, limit, "train")
    eval_features, cut["eval"] = encode_counting_cuts(task, eval_examples, eval_tokenizer, limit, "eval")
    fitted, moved = train_and_transfer(models, strategy, task, features, train_tokenizer.pad_token_id, settings, cfg.device, teacher, mlm)

    score_examples = train_examples[:TRAIN_SCORE_LIMIT]
    train_model = models.trained[-1]  # JOINT: the target student, which is also evaluated
    train_score = _score(task, train_model, score_examples, features[:TRAIN_SCORE_LIMIT], train_tokenizer, cfg, f"score {cfg.src_lang} train")
    zero_shot = _score(task, models.evaluated, eval_examples, eval_features, eval_tokenizer, cfg, f"evaluate {cfg.trg_lang}")

    clear_earlier(cfg.out)  # an earlier result, or an unfinished run's models, never sits beside this run's
    spec = ModelSpec(cfg.task, str(cfg.src_model if strategy.evaluates == "src" else cfg.trg_model), strategy.extra_layers, strategy.adapters, cfg.head)
    saved = {}
    if cfg.save_model:
        saved["zero_shot"] = save_task_model(models.evaluated, spec, cfg.out / model_dir_name()).name
    few_shot, saved_few_shot = {}, {}
    shot_indices = nested_shots(shot_pool, cfg.shots, cfg.seed)
    shot_settings = FitSettings(cfg.few_shot_epochs, cfg.few_shot_batch_size, cfg.few_shot_lr, cfg.weight_decay, cfg.warmup, seed=cfg.seed,
                                schedule=cfg.few_shot_schedule)
    for k in cfg.shots:
        shots = [shot_pool[i] for i in shot_indices[k]]
        model = copy.deepcopy(models.evaluated)
        select_trainable(model, strategy)
        shot_features, cut["few_shot"][str(k)] = encode_counting_cuts(task, shots, eval_tokenizer, limit, f"{k}-shot")
        shot_fit = fit([model], task, shot_features, eval_tokenizer.pad_token_id, shot_settings, cfg.device, f"{cfg.task} {k}-shot")
        few_shot[str(k)] = {**_score(task, model, eval_examples, eval_features, eval_tokenizer, cfg, f"evaluate {cfg.trg_lang} {k}-shot"), "fit": shot_fit}
        if cfg.save_model:
            saved_few_shot[str(k)] = save_task_model(model, spec, cfg.out / model_dir_name(k)).name
        del model
    if cfg.save_model:
        saved["few_shot"] = saved_few_shot

    result = {
        "task": cfg.task,
        "metric": task.metric,
        "strategy": strategy.name + ("" if teacher is None else "+td" if not mlm else "+td-mlm"),
        "label": cfg.label,
        "src": cfg.src_lang,
        "trg": cfg.trg_lang,
        "models": {"src": _absolute(cfg.src_model), "trg": _absolute(cfg.trg_model), "evaluated": strategy.evaluates},
        "distillation_run": _absolute(cfg.distillation_run),
        "zero_shot": zero_shot,
        "train": train_score,
        "few_shot": few_shot,
        "fit": fitted,
        "trainable_parameters": sum(p.numel() for p in {id(p): p for m in models.trained for p in m.parameters() if p.requires_grad}.values()),
        "moved_parameters": moved,
        "truncated": cut,
        "settings": {**asdict(settings), "max_length": limit, "train_examples": len(train_examples), "eval_examples": len(eval_examples),
                     "train_limit": cfg.train_limit, "eval_limit": cfg.eval_limit,
                     "few_shot": {"shots": cfg.shots, **asdict(shot_settings), "drawn": shot_indices[max(cfg.shots)]} if cfg.shots else None,  # k-shot: the first k drawn
                     "head": cfg.head if task.head != "token" else "linear", "ner_labels": cfg.ner_labels if cfg.task == "ner" else None,
                     "task_teacher": _absolute(cfg.task_teacher), "task_teacher_loss": cfg.task_teacher_loss if cfg.task_teacher else None,
                     "device": cfg.device},
        "inputs": {
            "train": input_record(cfg.train, len(train_examples)), "train_labels": input_record(task.labels_file(cfg.train, cfg.train_labels)),
            "eval": input_record(cfg.eval, len(eval_examples)), "eval_labels": input_record(task.labels_file(cfg.eval, cfg.eval_labels)),
            "shots": input_record(cfg.shots_file, len(shot_pool)) if cfg.shots else None,
            "shots_labels": input_record(task.labels_file(cfg.shots_file, cfg.shots_labels)) if cfg.shots else None,
        },
        "saved_models": saved or None,  # directories relative to this file
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(cfg.out, result)
    log_result(result, cfg)
    return result


def _absolute(path: Path | None) -> str | None:
    """Paths in result.json are absolute: the result still names its inputs after it is moved."""
    return str(Path(path).resolve()) if path is not None else None


def log_result(result: dict, cfg: TransferConfig) -> None:
    """One MLflow run per transfer run: a child of its distillation run when there is one, else in
    the output directory's own store."""
    from mdist.tracking import Tracker

    name = f"{result['task']} {result['strategy']} {result['src']}->{result['trg']}"
    if cfg.distillation_run is not None and cfg.distillation_mlflow_run_id:
        tracker = Tracker(cfg.distillation_run, "mdist-transfer", run_name=name, parent_run_id=cfg.distillation_mlflow_run_id)
    else:
        tracker = Tracker(cfg.out, "mdist-transfer", run_name=name)
    metric, key = result["metric"], f"{result['task']}.{result['trg']}"
    tracker.log_params({"task": result["task"], "strategy": result["strategy"], "label": result["label"], "models": result["models"], "settings": result["settings"]})
    metrics = {f"{key}.zero_shot.{metric}": result["zero_shot"][metric], f"{result['task']}.{result['src']}.train.{metric}": result["train"][metric]}
    metrics.update({f"{key}.few_shot_{k}.{metric}": score[metric] for k, score in result["few_shot"].items()})
    tracker.log_metrics(metrics, step=result["fit"]["steps"])
    tracker.log_artifact(cfg.out / RESULT_FILE)
    tracker.close()
