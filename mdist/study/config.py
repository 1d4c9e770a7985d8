"""The study file: one YAML description of a whole experiment (thesis chapter 4), validated like a recipe.

`load_study` reads a shipped study (`mdist/studies/`) or a YAML path, applies `--set key=value`, and
checks everything a stage would otherwise find out hours later: unknown keys and types, unknown
recipes, strategies, tasks and models, and every input file. Relative data paths are under `data`;
the teacher path is relative to the working directory, as in recipes.
"""
from __future__ import annotations

import json

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mdist.config import NAME, apply_override, build_dataclass, load_run_config, read_yaml_mapping
from mdist.errors import ConfigError, path_problem

STAGE_KINDS = ("prep", "distill", "baseline", "retrieval", "perplexity", "finetune", "report")


@dataclass
class Resources:
    """What one stage's SLURM job asks for (`sbatch --gpus --cpus-per-task --mem --time`); ignored on one machine."""

    gpus: int = 0
    cpus: int = 1
    tasks: int = 1  # srun tasks (one per GPU for a multi-GPU distillation)
    mem: Optional[str] = None  # e.g. 32G
    time: str = "01:00:00"
    partition: Optional[str] = None


@dataclass
class DistillRun:
    """One distillation: a recipe plus overrides. The study sets the teacher, the shards and (unless
    `set` names students.groups) one monolingual student per language."""

    recipe: str
    set: list[str] = field(default_factory=list)


@dataclass
class Baselines:
    """Teacher-layer models without distillation (thesis §4.3.1), one per init."""

    layers: int = 6
    inits: list[str] = field(default_factory=list)


@dataclass
class Retrieval:
    """A Tatoeba pair: queries in the target language, English candidates line by line."""

    queries: str
    candidates: str
    limit: Optional[int] = None  # only the first LIMIT pairs


@dataclass
class Task:
    """A downstream task: English training data, per-language evaluation files, and the files the
    few-shot k examples are drawn from."""

    train: str
    eval: dict[str, str]
    train_labels: Optional[str] = None
    eval_labels: dict[str, str] = field(default_factory=dict)
    shots: dict[str, str] = field(default_factory=dict)
    shots_labels: dict[str, str] = field(default_factory=dict)
    k: list[int] = field(default_factory=list)


@dataclass
class Finetune:
    """The grid: model → transfer strategies, × tasks × target languages × seeds."""

    models: dict[str, list[str]]
    seeds: list[int] = field(default_factory=lambda: [42])
    options: list[str] = field(default_factory=list)  # extra `mdist finetune` options (epochs, limits, ...)


@dataclass
class Study:
    name: str
    teacher: str
    languages: list[str]  # target languages
    corpus: dict[str, list[str]]  # language (source included) -> CC-100 text files
    distill: dict[str, DistillRun]
    source: str = "en"
    data: str = "."  # root of the relative data paths
    prep: list[str] = field(default_factory=list)  # extra `mdist prep` options
    baselines: Baselines = field(default_factory=Baselines)
    retrieval: dict[str, Retrieval] = field(default_factory=dict)
    perplexity: dict[str, list[str]] = field(default_factory=dict)
    eval: list[str] = field(default_factory=list)  # extra `mdist eval` options (--limit, --batch-size, ...)
    tasks: dict[str, Task] = field(default_factory=dict)
    finetune: Optional[Finetune] = None
    resources: dict[str, Resources] = field(default_factory=dict)

    @property
    def all_languages(self) -> list[str]:
        return [self.source, *[lang for lang in self.languages if lang != self.source]]

    def models(self) -> list[str]:
        """Every model the evaluation and fine-tuning stages may name: the teacher, the baselines, the distillation runs."""
        return ["teacher", *(f"baseline-{init}" for init in self.baselines.inits), *self.distill]

    def path(self, name: str) -> Path:
        """A data path of the study, absolute."""
        return (Path(self.data) / name).resolve()

    def resources_of(self, kind: str) -> Resources:
        return self.resources.get(kind, Resources())


def load_study(study: str, overrides: list[str] = ()) -> Study:
    data, origin = read_yaml_mapping(study, package="mdist.studies", kind="study")
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        built = build_dataclass(Study, data, "")
        _validate(built)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {' '.join(str(err).split())}") from None
    return built


def _validate(study: Study) -> None:
    from mdist.strategies import INIT_MAPPINGS
    from mdist.transfer.strategies import get_strategy
    from mdist.transfer.tasks import TASKS

    if not NAME.fullmatch(study.name):
        raise ConfigError(f"config key 'name': '{study.name}' must be letters, digits, '_' or '-' (it names the MLflow experiment and jobs)")
    for lang in study.all_languages:
        if not NAME.fullmatch(lang):
            raise ConfigError(f"config key 'languages': '{lang}' must be letters, digits, '_' or '-'")
        if lang not in study.corpus:
            raise ConfigError(f"config key 'corpus' has no files for language '{lang}'")
    for kind in study.resources:
        if kind not in STAGE_KINDS:
            raise ConfigError(f"config key 'resources.{kind}': unknown stage kind (known: {', '.join(STAGE_KINDS)})")
    for init in study.baselines.inits:
        if init not in INIT_MAPPINGS:
            raise ConfigError(f"config key 'baselines.inits': unknown init '{init}' (known: {', '.join(INIT_MAPPINGS)})")
    for name in study.distill:
        if not NAME.fullmatch(name) or name == "teacher" or name.startswith("baseline-"):
            raise ConfigError(f"config key 'distill.{name}': a run name is letters, digits, '_' or '-', not 'teacher' or 'baseline-*'")
    for task, spec in study.tasks.items():
        if task not in TASKS:
            raise ConfigError(f"config key 'tasks.{task}': unknown task (known: {', '.join(TASKS)})")
        missing = [lang for lang in study.languages if lang not in spec.eval]
        if missing:
            raise ConfigError(f"config key 'tasks.{task}.eval' has no file for language(s) {', '.join(missing)}")
        if spec.k and any(lang not in spec.shots for lang in study.languages):
            raise ConfigError(f"config key 'tasks.{task}.k' needs tasks.{task}.shots: a file per target language to draw the k examples from")
    if study.finetune is not None:
        for model, strategies in study.finetune.models.items():
            if model not in study.models():
                raise ConfigError(f"config key 'finetune.models.{model}': unknown model (known: {', '.join(study.models())})")
            for strategy in strategies:
                try:
                    get_strategy(strategy)
                except ConfigError as err:
                    raise ConfigError(f"config key 'finetune.models.{model}': {err}") from None
    for lang in [*study.retrieval, *study.perplexity]:
        if lang not in study.languages:
            raise ConfigError(f"config key 'retrieval' / 'perplexity': '{lang}' is not a target language ({', '.join(study.languages)})")
    _check_teacher(study)
    _check_files(study)
    for name, run in study.distill.items():
        _check_recipe(study, name, run)


def _check_teacher(study: Study) -> None:
    problem = path_problem(Path(study.teacher), want_dir=True)
    if problem:
        raise ConfigError(f"config key 'teacher': teacher directory '{study.teacher}' {problem}")


def data_files(study: Study) -> dict[str, str]:
    """Every input file of the study by the key that names it."""
    files = {f"corpus.{lang}": path for lang, paths in study.corpus.items() for path in paths}
    files.update({f"retrieval.{lang}.{end}": getattr(pair, end) for lang, pair in study.retrieval.items() for end in ("queries", "candidates")})
    files.update({f"perplexity.{lang}": path for lang, paths in study.perplexity.items() for path in paths})
    for task, spec in study.tasks.items():
        files[f"tasks.{task}.train"] = spec.train
        if spec.train_labels:
            files[f"tasks.{task}.train_labels"] = spec.train_labels
        for key in ("eval", "eval_labels", "shots", "shots_labels"):
            files.update({f"tasks.{task}.{key}.{lang}": path for lang, path in getattr(spec, key).items() if lang in study.languages})
    return files


def _check_files(study: Study) -> None:
    for key, name in data_files(study).items():
        problem = path_problem(study.path(name), want_dir=False)
        if problem:
            raise ConfigError(f"config key '{key}': file '{study.path(name)}' {problem}")


def distill_overrides(study: Study, run: DistillRun, data: list[str]) -> list[str]:
    """The `--set` items a distillation runs with: the study's teacher, `data` and students, then the run's own."""
    fixed = [f"teacher.path={Path(study.teacher).resolve()}", *data]
    if not any(item.split("=", 1)[0].strip() == "students.groups" for item in run.set):
        fixed.append("students.groups=" + json.dumps({lang: [lang] for lang in study.all_languages}))  # JSON: `no` stays a string
    return [*fixed, *run.set]


def shard_data(shards: Path) -> list[str]:
    return ["data.kind=shards", f"data.shards={shards}"]


def _check_recipe(study: Study, name: str, run: DistillRun) -> None:
    """The recipe with the study's settings, validated as `mdist distill` will; the shards do not exist yet,
    so the corpus text stands in for them (the same languages, files that exist)."""
    text = json.dumps({lang: [str(study.path(p)) for p in study.corpus[lang]] for lang in study.all_languages})
    try:
        cfg = load_run_config(run.recipe, distill_overrides(study, run, ["data.kind=text", f"data.text={text}"]))
    except ConfigError as err:
        raise ConfigError(f"config key 'distill.{name}' (recipe '{run.recipe}'): {err}") from None
    missing = [lang for lang in cfg.languages if lang not in study.all_languages]
    if missing:
        raise ConfigError(f"config key 'distill.{name}': its students own language(s) {', '.join(missing)} that the study does not prepare")
