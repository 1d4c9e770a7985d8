"""Finding the students of a distillation run: `RUN_DIR/summary.json` and `RUN_DIR/students/<name>/`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mdist.errors import DataError


@dataclass(frozen=True)
class StudentRun:
    run_dir: Path
    students: dict[str, list[str]]  # student name -> languages it owns
    mlflow_run_id: str | None

    @classmethod
    def load(cls, run_dir: Path) -> "StudentRun":
        summary_file = run_dir / "summary.json"
        if not summary_file.is_file():
            raise FileNotFoundError(f"'{summary_file}' does not exist (is '{run_dir}' a finished distillation run?)")
        try:
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
            students = {name: list(entry["languages"]) for name, entry in summary["students"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{summary_file}: expected {{\"students\": {{name: {{\"languages\": [...]}}}}}}: {type(err).__name__}: {err}") from None
        return cls(run_dir, students, summary.get("mlflow_run_id"))

    def student_dir(self, lang: str) -> Path:
        """The exported model directory of the student that owns `lang`."""
        owners = [name for name, languages in self.students.items() if lang in languages]
        if not owners:
            known = ", ".join(f"{name}: {'/'.join(langs)}" for name, langs in self.students.items())
            raise DataError(f"{self.run_dir / 'summary.json'}: no student owns language '{lang}' ({known})")
        path = self.run_dir / "students" / owners[0]
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"student '{owners[0]}' of '{self.run_dir}' has no exported model at '{path}'")
        return path
