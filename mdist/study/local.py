"""Running stages: one stage as a subprocess of `python -m mdist` with its own log and state record
(what a SLURM job of the study runs, too), and the whole study on one machine in dependency order."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import mdist
from mdist.errors import ConfigError
from mdist.study.stages import Stage
from mdist.study.state import DONE, FAILED, RUNNING, log_path, now, read_record, state_of, write_record
from mdist.tracking.tracker import STUDY, STUDY_DIR, STUDY_STAGE


def study_env(name: str, out: Path) -> dict:
    """The environment of a study's stages: this mdist importable (a checkout need not be installed),
    the study's name and directory for MLflow, and no launcher variables of the calling process."""
    from mdist.engine import without_launcher_variables

    env = without_launcher_variables(dict(os.environ))
    repo = str(Path(mdist.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([repo, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update({STUDY: name, STUDY_DIR: str(out.resolve())})
    return env


def run_stage(out: Path, stage: Stage, env: dict, tasks: int = 1) -> int:
    """Run one stage to its end; record it. Exit code 0 counts only if the stage's output appeared.
    Under SLURM with several tasks the command runs under srun (one task per GPU)."""
    earlier = read_record(out, stage.name) or {}
    log = log_path(out, stage.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    record = {"state": RUNNING, "argv": stage.argv, "start": now(), "log": str(log), "pid": os.getpid(), "host": socket.gethostname(),
              "attempt": earlier.get("attempt", 0) + 1}
    if os.environ.get("SLURM_JOB_ID"):
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        record["job_id"] = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    write_record(out, stage.name, record)
    command = [sys.executable, "-m", "mdist", *stage.argv]
    if tasks > 1 and os.environ.get("SLURM_JOB_ID"):
        command = ["srun", "--kill-on-bad-exit=1", *command]
    with open(log, "a", encoding="utf-8") as stream:  # appended: one file holds every attempt
        stream.write(f"==== {now()} attempt {record['attempt']}: {' '.join(command)}\n")
        stream.flush()
        code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env={**env, STUDY_STAGE: stage.name}).returncode
        if code == 0 and not Path(stage.output).exists():
            stream.write(f"==== exit 0 but {stage.output} was not written\n")
            code = 1
    write_record(out, stage.name, {**record, "state": DONE if code == 0 else FAILED, "end": now(), "exit_code": code})
    return code


def run_local(out: Path, stages: list[Stage], env: dict, say=print) -> int:
    """Every stage not yet done, in plan order (dependencies first); stops at the first failure.
    Refuses while a stage of the study runs elsewhere (another `study run` on the same directory)."""
    running = [(stage.name, record) for stage in stages for state, record in [state_of(out, stage)] if state == RUNNING]
    if running:
        name, record = running[0]
        raise ConfigError(f"stage {name} of this study is running (pid {record.get('pid')} on {record.get('host')}); wait for it or stop it")
    for stage in stages:  # plan order: a stage's dependencies are done before it (else this returned)
        state, _ = state_of(out, stage)
        if state == DONE:
            say(f"{stage.name}: done, skipped")
            continue
        say(f"{stage.name}: {'again after ' + state if state == FAILED else 'running'} (log {log_path(out, stage.name)})")
        if run_stage(out, stage, env) != 0:
            say(f"{stage.name}: failed; see {log_path(out, stage.name)}")
            return 1
    return 0
