"""The thesis's downstream tables from transfer results (`result.json` files under a directory).

Zero-shot (tables 4.4 / 4.6): one row per model and strategy, one column per task and target
language, and the average of the row's cells; a cell run with several seeds shows their mean. Few-shot (table 4.5): per task and target language,
one column per k, k = 0 being the zero-shot score.
"""
from __future__ import annotations

import json
from pathlib import Path

from mdist.errors import DataError
from mdist.tracking import ARTIFACTS_DIR, QUEUE_DIR
from mdist.transfer.outputs import RESULT_FILE
from mdist.transfer.tasks import TASKS

REQUIRED = ("task", "metric", "strategy", "label", "trg", "zero_shot", "few_shot")


def load_results(runs_dir: Path) -> list[tuple[Path, dict]]:
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"'{runs_dir}' is not a directory")
    results = []
    for path in sorted(runs_dir.rglob(RESULT_FILE)):
        if {ARTIFACTS_DIR, QUEUE_DIR} & set(path.relative_to(runs_dir).parts):
            continue  # copies logged to MLflow: in the embedded store, or in the tracking journal
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not a JSON file: {err}") from None
        missing = [key for key in REQUIRED if key not in result]
        if missing:
            raise DataError(f"{path}: not an 'mdist finetune' result (missing {', '.join(missing)})")
        results.append((path, result))
    if not results:
        raise DataError(f"no {RESULT_FILE} under '{runs_dir}' (run 'mdist finetune --out {runs_dir}/<name>' first)")
    return results


def row_name(result: dict) -> str:
    return f"{result['label']} · {result['strategy']}" if result["label"] else result["strategy"]


def _columns(results: list[tuple[Path, dict]]) -> list[tuple[str, str]]:
    order = list(TASKS)
    return sorted({(r["task"], r["trg"]) for _, r in results}, key=lambda c: (order.index(c[0]) if c[0] in order else len(order), c))


def _grid(results: list[tuple[Path, dict]], value) -> dict[str, dict[tuple[str, str], float | dict]]:
    """Row → column → value; runs of one cell that differ only in their seed are averaged (a dict value per key)."""
    cells: dict[str, dict] = {}
    origin: dict[tuple, Path] = {}
    for path, result in results:
        row, column, seed = row_name(result), (result["task"], result["trg"]), result.get("settings", {}).get("seed")
        if (row, column, seed) in origin:
            raise DataError(f"two results for '{row}' on {column[0]}-{column[1]}: {origin[row, column, seed]} and {path} (give them different --label)")
        origin[row, column, seed] = path
        cells.setdefault(row, {}).setdefault(column, []).append(value(result))
    return {row: {column: _mean(values) for column, values in columns.items()} for row, columns in cells.items()}


def _mean(values: list):
    if isinstance(values[0], dict):
        return {key: sum(v[key] for v in values) / len(values) for key in values[0] if all(key in v for v in values)}
    return sum(values) / len(values)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def zero_shot_table(results: list[tuple[Path, dict]]) -> str:
    columns = _columns(results)
    grid = _grid(results, lambda r: r["zero_shot"][r["metric"]])
    rows = []
    for name, cells in grid.items():
        values = [cells.get(c) for c in columns]
        present = [v for v in values if v is not None]
        rows.append([name, *(f"{v:.3f}" if v is not None else "–" for v in values), f"{sum(present) / len(present):.3f}"])
    return _markdown(["model · strategy", *(f"{t.upper()} {lang}" for t, lang in columns), "Average"], rows)


def few_shot_table(results: list[tuple[Path, dict]]) -> str | None:
    with_shots = [(p, r) for p, r in results if r["few_shot"]]
    if not with_shots:
        return None
    ks = {c: sorted({int(k) for _, r in with_shots if (r["task"], r["trg"]) == c for k in r["few_shot"]}) for c in _columns(with_shots)}
    grid = _grid(with_shots, lambda r: {0: r["zero_shot"][r["metric"]], **{int(k): s[r["metric"]] for k, s in r["few_shot"].items()}})
    header = ["model · strategy", *(f"{t.upper()} {lang} k={k}" for (t, lang), kk in ks.items() for k in [0, *kk])]
    rows = [[name, *(f"{cells[c][k]:.3f}" if c in cells and k in cells[c] else "–" for c, kk in ks.items() for k in [0, *kk])] for name, cells in grid.items()]
    return _markdown(header, rows)


def transfer_tables(runs_dir: Path) -> str:
    results = load_results(runs_dir)
    metrics = ", ".join(sorted({f"{r['task'].upper()}: {r['metric']}" for _, r in results}))
    parts = [f"## Zero-shot transfer ({len(results)} runs under {runs_dir}; {metrics})", "", zero_shot_table(results)]
    few = few_shot_table(results)
    if few:
        parts += ["", "## Few-shot (k labelled target examples after zero-shot training; k=0 is zero-shot)", "", few]
    return "\n".join(parts) + "\n"
