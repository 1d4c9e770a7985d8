"""Run configuration: YAML recipes resolved into validated dataclasses.

A run is composed of one small dataclass per component. `load_run_config` reads a named recipe
(shipped in `mdist/recipes/`) or a YAML path, applies `--set key=value` overrides, and validates
everything (unknown keys, wrong types, unknown names, missing paths) before any model is built.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from mdist.errors import ConfigError, path_problem
from mdist.manifests import manifest_path
from mdist.shipped import shipped_names
from mdist.strategies import MAPPINGS, STRATEGIES, layer_mapping, resolve_weights

TINY_RANDOM = "tiny-random"


@dataclass
class TinyTeacherConfig:
    """Shape of the random teacher built when `teacher.path: tiny-random` (tests, demo)."""

    layers: int = 4
    hidden: int = 64
    heads: int = 4
    ffn: int = 128
    vocab: int = 400
    max_positions: int = 130


@dataclass
class TeacherConfig:
    """The frozen multilingual teacher: a local Hugging Face XLM-R-family directory."""

    path: str = TINY_RANDOM
    zero3: bool = False  # ZeRO-3 partitioned inference across ranks (large teachers)
    dtype: str = "auto"  # auto (bf16 on GPUs, fp32 on CPU ranks) | bf16 | fp32: the teacher's weights and outputs
    tiny: TinyTeacherConfig = field(default_factory=TinyTeacherConfig)


def teacher_bf16(dtype: str, gpu: bool) -> bool:
    """Whether a teacher of `teacher.dtype` runs in bf16 on a GPU (`gpu`) or on a CPU rank: the one
    reading of the key, for the run (mdist.run) and the plan (mdist.memory) alike."""
    return dtype == "bf16" or (dtype == "auto" and gpu)


@dataclass
class StudentsConfig:
    """Student group: which student owns which languages, and how students are built."""

    groups: dict[str, list[str]] = field(default_factory=lambda: {"en": ["en"], "tr": ["tr"]})
    layers: int = 6
    hidden: Optional[int] = None  # narrower students (d' < d) get learnable projections
    init: str = "teacher"  # teacher | random
    init_mapping: str = "uniform"  # which teacher layers initialise the student layers
    share_embeddings: bool = True
    tie_head: bool = True


@dataclass
class LossConfig:
    """Distillation loss: a named strategy, optional weight/mapping overrides, temperature."""

    weights: Optional[dict[str, float]] = None  # None: the strategy's equal convex weights
    mapping: Optional[str] = None  # None: the strategy's mapping
    temperature: float = 1.0
    kernels: str = "torch"  # torch (PyTorch references) | triton (fused kernels; CUDA, or CPU under TRITON_INTERPRET=1)


@dataclass
class TrainConfig:
    """Algorithm 1 loop and optimisation."""

    steps: int = 100
    batch_size: int = 16  # sequences per language per micro-batch, per rank
    seq_len: int = 128
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0
    update: str = "sequential"  # sequential (thesis) | joint
    seed: int = 0
    save_every: int = 0  # 0: only the final checkpoint
    grad_accum: int = 1  # micro-batches per optimiser step; global batch = batch_size × grad_accum × world
    optimizer: str = "adamw"  # adamw (thesis; torch's fused kernel on a GPU machine) | adamw_fused (the fused kernel on any device) | lamb (large batches; ZeRO stage 0 only)
    log_every: int = 10
    mlm_probability: float = 0.15
    compile: bool = False  # torch.compile each encoder layer (students; teacher unless ZeRO-3); not with student ZeRO-3
    encoder: str = "hf"  # hf | fused (mdist.fused_encoder: one compiled layer; students, teacher unless ZeRO-3); not with student ZeRO-3 or train.compile
    eval_every: int = 0  # held-out pseudo-perplexity (data.heldout) every N steps, at step 0 and at the end; 0: off


@dataclass
class DataConfig:
    """Where training text comes from: `mdist prep` shards (CC-100 scale), text files per language
    (small corpora, held in memory), or the synthetic demo corpus."""

    kind: str = "text"  # shards | text | synthetic
    text: dict[str, list[str]] = field(default_factory=dict)
    shards: Optional[str] = None  # directory with `<lang>.manifest.json` files written by `mdist prep`
    num_workers: int = 2  # DataLoader workers per rank (shards)
    shuffle_block: int = 1024  # documents shuffled together (shards)
    worker_timeout_s: float = 600.0  # a loader worker that hands no batch for this long stops the run, named (shards, num_workers >= 1)
    heldout: dict[str, list[str]] = field(default_factory=dict)  # {lang: [files]}: held-out text scored every train.eval_every steps


@dataclass
class DistConfig:
    """The process group: how long a rank waits for the others (forming the group, a barrier, any collective)."""

    timeout_s: float = 600.0  # past it the waiting rank stops, naming the rank(s) or barrier it waited for
    memory_gib: Optional[float] = None  # memory per rank; set, `mdist distill` checks its plan against it (also on CPU ranks); None: a GPU's own, no check on CPU


@dataclass
class DeepSpeedConfig:
    """DeepSpeed engine settings that are not rendered from other sections."""

    zero_stage: int = 0
    offload_optimizer: bool = False  # ZeRO-Offload: fp32 master weights + optimiser states in CPU memory (stage >= 1)
    offload_params: bool = False  # ZeRO-Infinity parameter offload to CPU (stage 3 only)
    persistence_threshold: Optional[int] = None  # ZeRO-3: params with fewer elements stay gathered (None: the template's)


@dataclass
class TrackingConfig:
    """MLflow tracking: sqlite store in the run directory unless MLFLOW_TRACKING_URI is set."""

    experiment: str = "mdist"
    enabled: bool = True
    parent_run_id: Optional[str] = None  # log as a child of this MLflow run (`mdist sweep` sets it for its grid's runs)


@dataclass
class RunConfig:
    strategy: str = "monoshot"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    students: StudentsConfig = field(default_factory=StudentsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def languages(self) -> list[str]:
        """Union of all students' languages, in first-seen order (Algorithm 1's L)."""
        seen: dict[str, None] = {}
        for langs in self.students.groups.values():
            seen.update(dict.fromkeys(langs))
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building from plain data


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, key)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        key_type, val_type = typing.get_args(hint)
        return {
            _check_type(k, key_type, f"{key}"): _check_type(v, val_type, f"{key}.{k}")
            for k, v in value.items()
        }
    if hint in (int, float) and isinstance(value, int) and abs(value) >= 2**63:  # float() overflows; str() may refuse
        raise ConfigError(f"config key '{key}' must be a number of magnitude below 2**63, got an integer of {len(hex(abs(value))) * 4 - 8}+ bits")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(
                f"config key '{key}' must be of type {hint.__name__}, got {value!r}"
            )
        return value
    raise TypeError(f"unsupported config type {hint} at {key}")  # a bug in this module


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    where = f"'{prefix}'" if prefix else "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key '{key}' (known in {where}: {', '.join(sorted(known))})")
    kwargs = {
        name: _check_type(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


INT_MAX = 2**31 - 1  # counters DeepSpeed, torch and the step logs keep as 32-bit ints
WEEK_S = 7 * 24 * 3600.0


class Range(typing.NamedTuple):
    """A numeric key's legal range. `open`: both bounds excluded; `why`: what the upper bound protects."""

    value: Any
    low: float
    high: float
    why: str
    open: bool = False


def _ranges(cfg: RunConfig) -> dict[str, Range]:
    """Every numeric key and its range (the list docs/configuration.md points to). A None
    value is the key's documented default (e.g. `students.hidden`: the teacher's width)."""
    t, s, tiny, d = cfg.train, cfg.students, cfg.teacher.tiny, cfg.data
    small = "a tiny test teacher"
    return {
        "teacher.tiny.layers": Range(tiny.layers, 1, 48, small), "teacher.tiny.hidden": Range(tiny.hidden, 1, 4096, small),
        "teacher.tiny.heads": Range(tiny.heads, 1, 64, small), "teacher.tiny.ffn": Range(tiny.ffn, 1, 16384, small),
        "teacher.tiny.vocab": Range(tiny.vocab, 16, 262144, small),  # low: sentencepiece needs room beyond the special pieces
        "teacher.tiny.max_positions": Range(tiny.max_positions, 5, 8194, small),
        "students.layers": Range(s.layers, 1, 96, "deeper than any XLM-R-family teacher"),
        "students.hidden": Range(s.hidden, 1, 16384, "wider than any XLM-R-family teacher"),
        "loss.temperature": Range(cfg.loss.temperature, 0, 1000, "softmax of logits / T is flat beyond it", open=True),
        "train.steps": Range(t.steps, 1, INT_MAX, "a 32-bit step counter"),
        "train.batch_size": Range(t.batch_size, 1, 65536, "sequences per language per micro-batch; use train.grad_accum"),
        "train.seq_len": Range(t.seq_len, 3, 65536, "tokens per sequence"),  # low: <s>, a token, </s>
        "train.lr": Range(t.lr, 0, 1, "an Adam step of more than 1 per parameter diverges", open=True),
        "train.weight_decay": Range(t.weight_decay, 0, 1, "decoupled decay past 1 flips weights"),
        "train.warmup_steps": Range(t.warmup_steps, 0, INT_MAX, "a 32-bit step counter"),
        "train.grad_clip": Range(t.grad_clip, 0, 1e6, "a clip norm"),
        "train.seed": Range(t.seed, 0, 2**32 - 1, "numpy's seed range"),
        "train.save_every": Range(t.save_every, 0, INT_MAX, "a 32-bit step counter"),
        "train.grad_accum": Range(t.grad_accum, 1, 65536, "micro-batches per optimiser step"),
        "train.log_every": Range(t.log_every, 1, INT_MAX, "a 32-bit step counter"),
        "train.mlm_probability": Range(t.mlm_probability, 0, 1, "a probability", open=True),
        "train.eval_every": Range(t.eval_every, 0, INT_MAX, "a 32-bit step counter"),
        "data.num_workers": Range(d.num_workers, 0, 256, "loader processes per rank"),
        "data.shuffle_block": Range(d.shuffle_block, 1, 10**7, "documents held in memory per worker"),
        "data.worker_timeout_s": Range(d.worker_timeout_s, 0, WEEK_S, "a week", open=True),
        "dist.timeout_s": Range(cfg.dist.timeout_s, 0, WEEK_S, "a week", open=True),
        "dist.memory_gib": Range(cfg.dist.memory_gib, 0, 2**20, "a TiB per rank", open=True),
        "deepspeed.persistence_threshold": Range(cfg.deepspeed.persistence_threshold, 0, INT_MAX, "a 32-bit element count"),
    }


def _out_of_range(key: str, r: Range) -> str | None:
    """The line for a value outside its range (NaN and infinities included), or None."""
    if isinstance(r.value, float) and math.isnan(r.value) or (r.value <= r.low if r.open else r.value < r.low):
        return f"config key '{key}' must be {'>' if r.open else '>='} {r.low}, got {r.value}"
    if r.value >= r.high if r.open else r.value > r.high:
        return f"config key '{key}' must be {'<' if r.open else '<='} {r.high} ({r.why}), got {r.value}"
    return None


def _check_ranges(cfg: RunConfig) -> None:
    for key, r in _ranges(cfg).items():
        line = None if r.value is None else _out_of_range(key, r)
        if line:
            raise ConfigError(line)
    if cfg.teacher.tiny.hidden % cfg.teacher.tiny.heads:
        raise ConfigError(f"config key 'teacher.tiny.hidden' ({cfg.teacher.tiny.hidden}) must be a multiple of teacher.tiny.heads ({cfg.teacher.tiny.heads})")
    if not cfg.tracking.experiment.strip():
        raise ConfigError("config key 'tracking.experiment' must not be empty")


def check_against_teacher(cfg: RunConfig, teacher: dict[str, Any]) -> None:
    """Keys whose legal range depends on the teacher's config (its config.json, or teacher.tiny),
    checked before any model is built."""
    layers, hidden, heads = teacher["num_hidden_layers"], teacher["hidden_size"], teacher["num_attention_heads"]
    longest = teacher["max_position_embeddings"] - teacher.get("pad_token_id", 1) - 1  # XLM-R positions start after the pad id
    if cfg.train.seq_len > longest:
        raise ConfigError(f"config key 'train.seq_len' ({cfg.train.seq_len}) exceeds the teacher's longest input, {longest} tokens")
    if cfg.students.layers > layers:
        raise ConfigError(f"config key 'students.layers' ({cfg.students.layers}) exceeds the teacher's {layers} layers (no layer mapping exists)")
    width = hidden if cfg.students.hidden is None else cfg.students.hidden
    if width % heads:
        raise ConfigError(f"config key 'students.hidden' ({width}) must be a multiple of the teacher's {heads} attention heads")
    if cfg.students.init == "teacher" and width != hidden:
        raise ConfigError(f"config key 'students.init': 'teacher' copies the teacher's tensors and needs students.hidden {hidden} (or null); use 'random' for narrower students")
    if cfg.students.init == "teacher" and len(layer_mapping(cfg.students.init_mapping, cfg.students.layers, layers)) != cfg.students.layers:
        raise ConfigError(f"config key 'students.init_mapping': '{cfg.students.init_mapping}' gives no teacher layer to every student layer; use uniform, top or bottom")


def tiny_teacher_shape(tiny: TinyTeacherConfig) -> dict[str, Any]:
    """The config.json keys `check_against_teacher` and the memory plan read, for the tiny random teacher."""
    return {"num_hidden_layers": tiny.layers, "hidden_size": tiny.hidden, "num_attention_heads": tiny.heads, "max_position_embeddings": tiny.max_positions,
            "vocab_size": tiny.vocab, "intermediate_size": tiny.ffn, "model_type": "xlm-roberta"}


def check_zero_settings(cfg: RunConfig) -> None:
    """The ZeRO stage and offload against each other and against the optimiser and encoder settings
    (also asked by `mdist.plan` of each layout it considers)."""
    if cfg.deepspeed.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"config key 'deepspeed.zero_stage' must be 0, 1, 2 or 3, got {cfg.deepspeed.zero_stage}")
    if cfg.deepspeed.offload_optimizer and cfg.deepspeed.zero_stage == 0:
        raise ConfigError("config key 'deepspeed.offload_optimizer' needs deepspeed.zero_stage 1, 2 or 3")
    if cfg.deepspeed.offload_params and cfg.deepspeed.zero_stage != 3:
        raise ConfigError("config key 'deepspeed.offload_params' needs deepspeed.zero_stage 3")
    if cfg.train.optimizer == "lamb" and cfg.deepspeed.zero_stage != 0:
        raise ConfigError(
            "config key 'train.optimizer': lamb needs deepspeed.zero_stage 0 (ZeRO flattens each parameter group "
            "into one partition, so LAMB's per-tensor trust ratio would become a per-partition one)"
        )
    if cfg.train.optimizer == "adamw_fused" and cfg.deepspeed.offload_optimizer:
        raise ConfigError(
            "config key 'train.optimizer': adamw_fused steps on the device, but with deepspeed.offload_optimizer the "
            "optimiser runs in CPU memory (DeepSpeed's CPU Adam); use adamw"
        )
    if cfg.train.compile and cfg.deepspeed.zero_stage == 3:
        raise ConfigError(
            "config key 'train.compile' needs deepspeed.zero_stage 0, 1 or 2 (ZeRO-3 gathers each layer's parameters "
            "in module hooks, which compiled layers would trace into their graphs)"
        )
    if cfg.train.encoder == "fused" and cfg.deepspeed.zero_stage == 3:
        raise ConfigError(
            "config key 'train.encoder': fused needs deepspeed.zero_stage 0, 1 or 2 (the fused layer reads parameters "
            "directly, bypassing ZeRO-3's gather hooks)"
        )
    if cfg.train.encoder == "fused" and cfg.train.compile:
        raise ConfigError(
            "config key 'train.compile' compiles the Hugging Face layers, which train.encoder: fused replaces with its own "
            "compiled layer; set one of them"
        )


def _validate(cfg: RunConfig, check_paths: bool = True) -> None:
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(
            f"config key 'strategy': unknown strategy '{cfg.strategy}' "
            f"(known: {', '.join(sorted(STRATEGIES))})"
        )
    if cfg.loss.mapping is not None and cfg.loss.mapping not in MAPPINGS:
        raise ConfigError(f"config key 'loss.mapping': unknown mapping '{cfg.loss.mapping}' (known: {', '.join(MAPPINGS)})")
    if cfg.students.init_mapping not in MAPPINGS:
        raise ConfigError(f"config key 'students.init_mapping': unknown mapping '{cfg.students.init_mapping}' (known: {', '.join(MAPPINGS)})")
    resolve_weights(cfg.strategy, cfg.loss.weights)
    if not cfg.students.groups:
        raise ConfigError("config key 'students.groups' must name at least one student")
    for name, langs in cfg.students.groups.items():
        _check_groups_entry(name, langs)
    choices = {
        "students.init": (cfg.students.init, ("teacher", "random")),
        "teacher.dtype": (cfg.teacher.dtype, ("auto", "bf16", "fp32")),
        "loss.kernels": (cfg.loss.kernels, ("torch", "triton")),
        "train.update": (cfg.train.update, ("sequential", "joint")),
        "train.optimizer": (cfg.train.optimizer, ("adamw", "adamw_fused", "lamb")),
        "train.encoder": (cfg.train.encoder, ("hf", "fused")),
        "data.kind": (cfg.data.kind, ("shards", "text", "synthetic")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key '{key}': '{value}' is not one of {', '.join(allowed)}")
    _check_ranges(cfg)
    check_zero_settings(cfg)
    if check_paths:
        _check_paths(cfg)
    _check_heldout(cfg, check_paths)


def _check_paths(cfg: RunConfig) -> None:
    """Teacher directory, shard manifests and text files exist and are readable."""
    if cfg.teacher.path != TINY_RANDOM:
        problem = path_problem(Path(cfg.teacher.path), want_dir=True)
        if problem:
            raise ConfigError(f"config key 'teacher.path': teacher directory '{cfg.teacher.path}' {problem}")
    if cfg.data.kind == "shards":
        if cfg.data.shards is None:
            raise ConfigError("config key 'data.shards' is not set: data.kind shards needs the directory `mdist prep` wrote")
        problem = path_problem(Path(cfg.data.shards), want_dir=True)
        if problem:
            raise ConfigError(f"config key 'data.shards': shard directory '{cfg.data.shards}' {problem}")
        missing = [lang for lang in cfg.languages if not manifest_path(Path(cfg.data.shards), lang).is_file()]
        if missing:
            raise ConfigError(f"config key 'data.shards': '{cfg.data.shards}' has no manifest for language(s) {', '.join(missing)} (run `mdist prep`)")
        if cfg.teacher.path == TINY_RANDOM:
            raise ConfigError("config key 'teacher.path': 'tiny-random' trains its tokenizer on in-memory text; use data.kind text or synthetic, or a teacher directory")
    if cfg.data.kind == "text":
        missing = [lang for lang in cfg.languages if lang not in cfg.data.text]
        if missing:
            raise ConfigError(f"config key 'data.text' has no files for language(s) {', '.join(missing)}")
        _check_files("data.text", cfg.data.text)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # student names become module and directory names


def _check_groups_entry(name: str, langs: list[str]) -> None:
    """One student: a name usable as a directory, at least one language, each named once."""
    for word, what in ((name, "student name"), *((lang, "language") for lang in langs)):
        if not NAME.fullmatch(word):
            raise ConfigError(f"config key 'students.groups.{name}': {what} '{word}' must be letters, digits, '_' or '-' (not starting with '_' or '-')")
    if not langs:
        raise ConfigError(f"config key 'students.groups.{name}': student '{name}' owns no language")
    if len(set(langs)) != len(langs):
        raise ConfigError(f"config key 'students.groups.{name}': student '{name}' lists a language twice ({', '.join(langs)})")


def _check_heldout(cfg: RunConfig, check_paths: bool) -> None:
    """`data.heldout` and `train.eval_every` come together; held-out languages are the run's own."""
    if cfg.train.eval_every and not cfg.data.heldout:
        raise ConfigError("config key 'train.eval_every' needs held-out text: set data.heldout ({lang: [files]})")
    if cfg.data.heldout and not cfg.train.eval_every:
        raise ConfigError("config key 'data.heldout' is set but train.eval_every is 0 (off); set train.eval_every to a number of steps")
    for lang, paths in cfg.data.heldout.items():
        if lang not in cfg.languages:
            raise ConfigError(f"config key 'data.heldout.{lang}': '{lang}' is not a language of this run (languages: {', '.join(cfg.languages)})")
        if not paths:
            raise ConfigError(f"config key 'data.heldout.{lang}' lists no file")
    if check_paths:
        _check_files("data.heldout", cfg.data.heldout)


def _check_files(key: str, files: dict[str, list[str]]) -> None:
    """Each listed file exists and is a readable file."""
    for lang, paths in files.items():
        for path in paths:
            problem = path_problem(Path(path), want_dir=False)
            if problem:
                raise ConfigError(f"config key '{key}.{lang}': file '{path}' {problem}")


# ---------------------------------------------------------------- recipes and overrides


def read_yaml_mapping(name: str, package: str = "mdist.recipes", kind: str = "recipe") -> tuple[dict[str, Any], str]:
    """A YAML path, or the name of a file shipped in `package`, read as a mapping; with the words that name it in errors."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        problem = path_problem(path, want_dir=False)
        if problem:
            raise ConfigError(f"{kind} file '{path}' {problem}")
        try:
            text, origin = path.read_text(encoding="utf-8"), f"{kind} file '{path}'"
        except UnicodeDecodeError:
            raise ConfigError(f"{kind} file '{path}' is not text (a {kind} is a YAML file)") from None
    else:
        candidate = resources.files(package) / f"{name}.yaml"
        if not candidate.is_file():
            raise ConfigError(f"unknown {kind} '{name}' (shipped: {', '.join(shipped_names(package))}; or give a YAML path)")
        text, origin = candidate.read_text(encoding="utf-8"), f"{kind} '{name}'"
    try:
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"{origin} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must be a YAML mapping at the top level")
    return data, origin


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{assignment}': '{part}' is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError) as err:  # ValueError: an integer past Python's 4300 digits
        raise ConfigError(f"override '{key}=...': the value cannot be read as YAML ({' '.join(str(err).split())})") from None


def resolve_config(data: dict[str, Any], check_paths: bool = True) -> RunConfig:
    cfg = build_dataclass(RunConfig, data, "")
    _validate(cfg, check_paths)
    return cfg


def load_run_config(recipe: str, overrides: list[str] = (), check_paths: bool = True) -> RunConfig:
    """`check_paths` False: the teacher directory and data files need not exist yet (`mdist plan`)."""
    data, _ = read_yaml_mapping(recipe)
    for assignment in overrides:
        apply_override(data, assignment)
    return resolve_config(data, check_paths)
