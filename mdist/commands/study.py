"""`mdist study plan|run|status STUDY`: a whole study (thesis chapter 4) from one YAML file, as stages of the
existing commands, run in dependency order on this machine or submitted to SLURM as chained jobs.

    mdist study plan tiny --set teacher=demo-out/teacher
    mdist study run thesis-ch4 --out studies/ch4 --slurm
    mdist study status studies/ch4
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
from pathlib import Path

from mdist.argtypes import output_dir
from mdist.errors import ConfigError
from mdist.shipped import shipped_names

PLAN_FILE = "plan.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("study", help="a whole study from one YAML file: plan its stages, run them here or on SLURM, show their states")
    actions = parser.add_subparsers(dest="action", required=True)
    for action, help_text in (("plan", "print the stages, their commands, dependencies and resources"),
                              ("run", "run the stages not yet done, in dependency order (or submit them to SLURM with --slurm)")):
        p = actions.add_parser(action, help=help_text)
        p.add_argument("study", help=f"a shipped study ({', '.join(shipped_names('mdist.studies'))}) or a YAML path")
        p.add_argument("--out", type=output_dir, help="study directory (default: study-<name>)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key of the study, e.g. teacher=DIR")
        p.set_defaults(run=run_plan if action == "plan" else run_study)
    actions.choices["run"].add_argument("--slurm", action="store_true", help="submit every stage as an sbatch job (finetune grid: one job array), chained with afterok")
    status = actions.add_parser("status", help="each stage's state (pending, submitted, running, done, failed), times, job and log")
    status.add_argument("out", type=Path, help="study directory")
    status.set_defaults(run=run_status)
    report = actions.add_parser("report", help="(the report stage) tables, per-layer plots and report.md from the stages' results")
    report.add_argument("out", type=Path, help="study directory")
    report.set_defaults(run=run_report)
    stage = actions.add_parser("stage", help="(what a SLURM job runs) run one stage of a planned study and record its state")
    stage.add_argument("out", type=Path, help="study directory")
    stage.add_argument("name", nargs="?", help="stage name")
    stage.add_argument("--array-list", type=Path, help="a job array's stage names, one per line; SLURM_ARRAY_TASK_ID picks the line")
    stage.set_defaults(run=run_stage)


def _planned(args: argparse.Namespace):
    from mdist.study.config import load_study
    from mdist.study.stages import plan

    study = load_study(args.study, args.overrides)
    out = (args.out or Path(f"study-{study.name}")).resolve()
    return study, out, plan(study, out)


def run_plan(args: argparse.Namespace) -> int:
    from mdist.study.slurm import resource_options

    study, out, stages = _planned(args)
    print(f"study '{study.name}' in {out}: {len(stages)} stages")
    for stage in stages:
        print(f"\n{stage.name}  [{stage.kind}; slurm: {' '.join(resource_options(study, stage.kind))}]")
        print(f"  after: {', '.join(stage.deps) or '-'}")
        print(f"  mdist {shlex.join(stage.argv)}")
    return 0


def run_study(args: argparse.Namespace) -> int:
    from mdist.study.local import run_local, study_env
    from mdist.study.state import slurm_queue, status_table

    study, out, stages = _planned(args)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"study": study.name, "tasks": {s.kind: study.resources_of(s.kind).tasks for s in stages}, "stages": [s.to_dict() for s in stages]}
    (out / PLAN_FILE).write_text(json.dumps(plan, indent=1) + "\n", encoding="utf-8")
    env = study_env(study.name, out)
    if args.slurm:
        from mdist.study.slurm import submit

        queued = slurm_queue(env)
        if queued is None:
            raise ConfigError("--slurm: squeue does not answer (is SLURM installed and SLURM_CONF set?)")
        jobs = submit(study, out, stages, env, queued)
        print(f"submitted {len(jobs)} stage(s) of {len(stages)}; follow with: mdist study status {out}")
        return 0
    code = run_local(out, stages, env)
    print(status_table(out, stages, None)[0], end="")
    return code


def _load_plan(out: Path):
    from mdist.study.stages import Stage

    path = out / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist (is '{out}' a study directory? `mdist study run` writes it)")
    plan = json.loads(path.read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(Stage)}
    return plan, [Stage(**{k: v for k, v in s.items() if k in fields}) for s in plan["stages"]]


def run_status(args: argparse.Namespace) -> int:
    from mdist.study.state import slurm_queue, status_table

    plan, stages = _load_plan(args.out)
    table, counts = status_table(args.out.resolve(), stages, slurm_queue())
    print(f"study '{plan['study']}' in {args.out.resolve()}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    print(table, end="")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from mdist.study.report import write_report

    plan, _ = _load_plan(args.out)
    print(f"wrote {write_report(args.out.resolve(), plan['study'])}")
    return 0


def run_stage(args: argparse.Namespace) -> int:
    from mdist.study.local import run_stage as run_one

    plan, stages = _load_plan(args.out)
    name = args.name
    if args.array_list is not None:
        name = args.array_list.read_text(encoding="utf-8").split()[int(os.environ["SLURM_ARRAY_TASK_ID"])]
    stage = next((s for s in stages if s.name == name), None)
    if stage is None:
        raise ConfigError(f"study '{plan['study']}' has no stage '{name}'")
    return run_one(args.out.resolve(), stage, dict(os.environ), plan["tasks"].get(stage.kind, 1))
