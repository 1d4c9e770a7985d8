"""A run directory belongs to one run: a new run never writes over an earlier one by accident.

An earlier run leaves `summary.json` (finished), `students/` or `checkpoints/`. A new `mdist
distill` into such a directory is refused unless it continues that run (`--resume`) or replaces it
(`--overwrite`, which removes those outputs first; the MLflow store stays, the new run is added to
it). `--resume` on a run that already finished its steps does nothing, so its summary stays intact.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mdist.errors import RunDirError

SUMMARY = "summary.json"
OUTPUTS = (SUMMARY, "students", "checkpoints")


def earlier_outputs(out_dir: Path) -> list[str]:
    """Names of an earlier run's outputs in `out_dir` (an empty `checkpoints/` does not count)."""
    found = [name for name in OUTPUTS if (out_dir / name).exists()]
    if "checkpoints" in found and not any((out_dir / "checkpoints").iterdir()):
        found.remove("checkpoints")
    return found


def finished_summary(out_dir: Path, steps: int) -> dict | None:
    """The summary of a run in `out_dir` that finished at least `steps` steps, else None."""
    path = out_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path} is not valid JSON ({err}); move it away to resume the run") from None
    return summary if isinstance(summary, dict) and summary.get("steps", 0) >= steps else None


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an earlier one's outputs (before anything is built)."""
    found = earlier_outputs(out_dir)
    if found and not resume and not overwrite:
        what = "a finished run" if SUMMARY in found else "an earlier run"
        raise RunDirError(f"{out_dir} holds {what} ({', '.join(found)}); continue it with --resume, "
                          "choose a new --out, or replace it with --overwrite")


def clear_outputs(out_dir: Path) -> None:
    """Remove an earlier run's outputs (`--overwrite`; rank 0 only)."""
    for name in OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
