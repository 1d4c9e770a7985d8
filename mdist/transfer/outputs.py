"""What one `mdist finetune` run leaves in its output directory, and in which order.

`result.json` is written last, whole (a temporary file renamed into place), after every saved task
model: a directory with `result.json` holds a finished run, one without it holds nothing or the
leftovers of a run that was killed. A new run into a finished run's directory is refused unless
`--overwrite`; a run that did not finish is simply run again: the new run removes the leftovers
(and, with `--overwrite`, the earlier result first) when it starts writing, so a result never sits
beside models of another run. Saved models: `model/` (zero-shot) and `model-<k>shot/` per k.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mdist.errors import ConfigError, output_problem

RESULT_FILE = "result.json"
ZERO_SHOT_MODEL = "model"


def model_dir_name(k: int | None = None) -> str:
    """The saved task model's directory: the zero-shot model (k None) or the one continued on k shots."""
    return ZERO_SHOT_MODEL if k is None else f"{ZERO_SHOT_MODEL}-{k}shot"


def check_out(out: Path, overwrite: bool, model_dirs: list[str]) -> None:
    """Before anything is read or trained: refuse a finished run's directory (without `overwrite`) and
    any result or model path that could not be written."""
    result = out / RESULT_FILE
    if result.is_file() and not overwrite:
        raise ConfigError(f"'{result}' exists; choose another --out or pass --overwrite")
    for path, want_dir in [(result, False), *((out / name, True) for name in model_dirs)]:
        problem = output_problem(path, want_dir)
        if problem:
            raise ConfigError(f"--out: '{path}' {problem}")


def clear_earlier(out: Path) -> None:
    """Remove an earlier run's result (first, so the directory stops claiming a finished run) and
    saved models, before this run writes its own."""
    (out / RESULT_FILE).unlink(missing_ok=True)
    for path in [out / ZERO_SHOT_MODEL, *out.glob(f"{ZERO_SHOT_MODEL}-*shot")]:
        if path.is_dir():
            shutil.rmtree(path)


def write_result(out: Path, result: dict) -> Path:
    from mdist.checkpoint_files import write_atomically

    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return out / RESULT_FILE


def input_record(path: Path | None, examples: int | None = None) -> dict | None:
    """An input file as provenance: its absolute path, its content's sha256 and the examples read from it."""
    from mdist.checkpoint_files import HASH, file_digest

    if path is None:
        return None
    record = {"path": str(Path(path).resolve()), HASH: file_digest(Path(path))}
    return record if examples is None else {**record, "examples": examples}
