"""A study as a graph of stages: each stage is one existing `mdist` command line, its dependencies,
the file whose presence says it finished, and the resources of its kind.

Layout of a study's output directory (`out`):
    shards/                      prep: webdataset shards and manifests of every language
    runs/<distill name>/         distill: run directories (students/, checkpoints/, summary.json)
    models/baseline-<init>/      baseline: teacher-layer models
    eval/retrieval/<lang>/<model>.json, eval/perplexity/<lang>/<model>.json
    finetune/<model>/<strategy>/<task>-<lang>-seed<seed>/result.json
    tables/, plots/, report.md   report
    logs/<stage>.log, stages/<stage>.json, plan.json, mlflow.db
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mdist.study.config import Study, distill_overrides, shard_data


@dataclass
class Stage:
    name: str
    kind: str  # one of mdist.study.config.STAGE_KINDS
    argv: list[str]  # arguments of `python -m mdist`
    output: str  # the file that exists once the stage has finished
    deps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_args(study: Study, out: Path, model: str) -> list[str]:
    """How `mdist eval` / `mdist finetune` are given a model of the study: a distillation run's students, or one directory."""
    if model in study.distill:
        return ["--students", str(out / "runs" / model)]
    return ["--model", str(model_dir(study, out, model))]


def model_dir(study: Study, out: Path, model: str) -> Path:
    return Path(study.teacher).resolve() if model == "teacher" else out / "models" / model


def model_deps(study: Study, model: str) -> list[str]:
    return [] if model == "teacher" else [f"distill-{model}" if model in study.distill else model]


def plan(study: Study, out: Path) -> list[Stage]:
    """Every stage of the study, in an order that respects the dependencies."""
    out = out.resolve()
    shards = out / "shards"
    teacher = str(Path(study.teacher).resolve())
    stages = [Stage(f"prep-{lang}", "prep", ["prep", "--lang", lang, "--input", *(str(study.path(p)) for p in study.corpus[lang]),
                                             "--out", str(shards), "--tokenizer", teacher, "--overwrite", "--no-progress", *study.prep],
                    str(shards / f"{lang}.manifest.json")) for lang in study.all_languages]
    preps = [stage.name for stage in stages]
    for name, run in study.distill.items():
        run_dir = out / "runs" / name
        sets = [item for s in distill_overrides(study, run, shard_data(shards)) for item in ("--set", s)]
        stages.append(Stage(f"distill-{name}", "distill", ["distill", "--recipe", run.recipe, "--out", str(run_dir), "--resume", *sets],
                            str(run_dir / "summary.json"), preps))
    for init in study.baselines.inits:
        model = f"baseline-{init}"
        stages.append(Stage(model, "baseline", ["baseline", "--teacher", teacher, "--layers", str(study.baselines.layers), "--init", init,
                                                 "--out", str(out / "models" / model)], str(out / "models" / model / "baseline.json")))
    stages += _evaluations(study, out)
    stages += finetune_grid(study, out)
    stages.append(Stage("report", "report", ["study", "report", str(out)], str(out / "report.md"), [s.name for s in stages if s.kind != "prep"]))
    return stages


def _evaluations(study: Study, out: Path) -> list[Stage]:
    stages = []
    for lang, pair in study.retrieval.items():
        for model in study.models():
            result = out / "eval" / "retrieval" / lang / f"{model}.json"
            models = (["--students", str(out / "runs" / model), "--lang", lang, "--candidate-lang", study.source] if model in study.distill
                      else ["--src-model", str(model_dir(study, out, model)), "--trg-model", str(model_dir(study, out, model)), "--mlflow-run-dir", str(out)])
            stages.append(Stage(f"retrieval-{model}-{lang}", "retrieval",
                                ["eval", "retrieval", *models, "--src-file", str(study.path(pair.queries)), "--trg-file", str(study.path(pair.candidates)),
                                 "--label", model, "--out", str(result), *(["--limit", str(pair.limit)] if pair.limit else []), *study.eval],
                                str(result), model_deps(study, model)))
    for lang, files in study.perplexity.items():
        for model in study.distill:
            result = out / "eval" / "perplexity" / lang / f"{model}.json"
            stages.append(Stage(f"perplexity-{model}-{lang}", "perplexity",
                                ["eval", "perplexity", "--students", str(out / "runs" / model), "--lang", lang, "--files", *(str(study.path(f)) for f in files),
                                 "--out", str(result), *study.eval], str(result), model_deps(study, model)))
    return stages


def finetune_grid(study: Study, out: Path) -> list[Stage]:
    """Model × strategy × task × target language × seed, each one `mdist finetune` (few-shot k's in the same run)."""
    if study.finetune is None:
        return []
    stages = []
    for model, strategies in study.finetune.models.items():
        for strategy in strategies:
            for task, spec in study.tasks.items():
                for lang in study.languages:
                    for seed in study.finetune.seeds:
                        run_dir = out / "finetune" / model / strategy / f"{task}-{lang}-seed{seed}"
                        argv = ["finetune", "--task", task, "--strategy", strategy, *model_args(study, out, model), "--src", study.source, "--trg", lang,
                                "--train", str(study.path(spec.train)), "--eval", str(study.path(spec.eval[lang])), "--label", model,
                                "--seed", str(seed), "--out", str(run_dir), "--overwrite"]
                        argv += _optional(study, "--train-labels", spec.train_labels) + _optional(study, "--eval-labels", spec.eval_labels.get(lang))
                        if spec.k:
                            argv += ["--shots", *map(str, spec.k), "--shots-file", str(study.path(spec.shots[lang]))]
                            argv += _optional(study, "--shots-labels", spec.shots_labels.get(lang))
                        stages.append(Stage(f"finetune-{model}-{strategy}-{task}-{lang}-seed{seed}", "finetune", argv + study.finetune.options,
                                            str(run_dir / "result.json"), model_deps(study, model)))
    return stages


def _optional(study: Study, flag: str, path: str | None) -> list[str]:
    return [flag, str(study.path(path))] if path else []
