"""The study on SLURM: every stage not yet done becomes one `sbatch` job, the fine-tuning grid one job
array, chained with `--dependency=afterok` (and `--kill-on-invalid-dep=yes`, so the dependants of a
failed stage leave the queue instead of waiting forever). SLURM schedules; this module only submits.

Each job runs `python -m mdist study stage OUT NAME` (an array task: the NAME of its index in a list
file), which runs the stage's command and writes its state record (mdist.study.local.run_stage).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from mdist.errors import ConfigError
from mdist.study.config import Study
from mdist.study.stages import Stage
from mdist.study.state import DONE, RUNNING, SUBMITTED, array_job, now, read_record, state_of, write_record

ARRAY_KIND = "finetune"  # the grid: one job array


def resource_options(study: Study, kind: str) -> list[str]:
    r = study.resources_of(kind)
    options = ["--ntasks", str(r.tasks), "--cpus-per-task", str(r.cpus), "--time", r.time]
    options += ["--gpus-per-task", str(r.gpus // r.tasks or 1)] if r.gpus else []
    options += ["--mem", r.mem] if r.mem else []
    return options + (["--partition", r.partition] if r.partition else [])


def submit(study: Study, out: Path, stages: list[Stage], env: dict, queued: set[str], say=print) -> dict[str, str]:
    """Submit what is not done; return stage name → job id. Refuses while a stage of this study is still queued."""
    states = {stage.name: state_of(out, stage, queued) for stage in stages}
    waiting = [name for name, (state, _) in states.items() if state in (SUBMITTED, RUNNING)]
    if waiting:
        raise ConfigError(f"study '{study.name}' still has queued or running stages in '{out}' ({', '.join(waiting[:3])}"
                          f"{', ...' if len(waiting) > 3 else ''}); wait for them or scancel them first")
    todo = [stage for stage in stages if states[stage.name][0] != DONE]
    jobs: dict[str, str] = {}
    array = [stage for stage in todo if stage.kind == ARRAY_KIND]
    for stage in todo:
        if stage.kind == ARRAY_KIND:
            if stage is array[0]:
                _submit_array(study, out, array, env, jobs)
                say(f"{ARRAY_KIND}: job array {array_job(jobs[stage.name])} ({len(array)} tasks)")
            continue
        job = _sbatch(study, out, stage.kind, [stage.name], _dependency(stage.deps, jobs), env, f"mdist-{study.name}-{stage.name}")
        jobs[stage.name] = job
        _mark_submitted(out, stage, job)
        say(f"{stage.name}: job {job}" + (f" after {', '.join(d for d in stage.deps if d in jobs)}" if any(d in jobs for d in stage.deps) else ""))
    return jobs


def _submit_array(study: Study, out: Path, array: list[Stage], env: dict, jobs: dict[str, str]) -> None:
    listing = out / "slurm" / f"{ARRAY_KIND}-{now().replace(':', '')}.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{stage.name}\n" for stage in array), encoding="utf-8")
    deps = sorted({dep for stage in array for dep in stage.deps})
    job = _sbatch(study, out, ARRAY_KIND, ["--array-list", str(listing)], _dependency(deps, jobs), env,
                  f"mdist-{study.name}-{ARRAY_KIND}", ["--array", f"0-{len(array) - 1}"])
    for index, stage in enumerate(array):
        jobs[stage.name] = f"{job}_{index}"
        _mark_submitted(out, stage, jobs[stage.name])


def _mark_submitted(out: Path, stage: Stage, job: str) -> None:
    earlier = read_record(out, stage.name) or {}
    write_record(out, stage.name, {"state": SUBMITTED, "argv": stage.argv, "job_id": job, "submitted": now(), "attempt": earlier.get("attempt", 0)})


def _dependency(deps: list[str], jobs: dict[str, str]) -> list[str]:
    ids = sorted({array_job(jobs[dep]) for dep in deps if dep in jobs})
    return ["--dependency", "afterok:" + ":".join(ids), "--kill-on-invalid-dep=yes"] if ids else []


def _sbatch(study: Study, out: Path, kind: str, stage_args: list[str], dependency: list[str], env: dict, name: str, extra: list[str] = ()) -> str:
    wrapped = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "mdist", "study", "stage", str(out), *stage_args])
    log = out / "logs" / ("slurm-%A_%a.out" if extra else "slurm-%j.out")
    log.parent.mkdir(parents=True, exist_ok=True)
    command = ["sbatch", "--parsable", "--job-name", name, "--output", str(log), "--chdir", str(out), *resource_options(study, kind),
               *dependency, *extra, "--wrap", f"exec {wrapped}"]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ConfigError("sbatch not found: SLURM's client commands are needed for --slurm") from None
    if proc.returncode != 0:
        raise ConfigError(f"sbatch refused stage job '{name}': {' '.join(proc.stderr.split())}")
    return proc.stdout.strip().split(";")[0]
