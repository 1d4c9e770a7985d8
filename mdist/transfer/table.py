"""The thesis's downstream tables from transfer results (`result.json` files under a directory).

Zero-shot (tables 4.4 / 4.6): one row per model and strategy (a model's rows together, each
strategy's task-distilled `+td` row below it), one column per task and target language, and the
average of the row's cells (as the thesis, over accuracy and F1 alike: the header says so when it
does; a row with fewer cells than the table has says how many it covers). Every cell shows the mean
over its runs' seeds ± their sample standard deviation and n; runs that differ in more than their
seed (a setting, an input file) are not pooled but refused. Few-shot (table 4.5): per task and
target language, one column per k, k = 0 being the zero-shot score.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from mdist.errors import DataError
from mdist.markdown import markdown_table
from mdist.tracking import ARTIFACTS_DIR, QUEUE_DIR
from mdist.transfer.outputs import RESULT_FILE
from mdist.transfer.tasks import TASKS

REQUIRED = ("task", "metric", "strategy", "label", "trg", "zero_shot", "few_shot")
METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1"}


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


def _row_order(result: dict) -> tuple:
    """Rows of one model sorted by strategy, each strategy's task-distilled row (`+td`) right below it."""
    strategy = result["strategy"]
    return result["label"], strategy.removesuffix("+td"), strategy.endswith("+td")


def _columns(results: list[tuple[Path, dict]]) -> list[tuple[str, str]]:
    order = list(TASKS)
    return sorted({(r["task"], r["trg"]) for _, r in results}, key=lambda c: (order.index(c[0]) if c[0] in order else len(order), c))


def _pooled_as(result: dict) -> dict[str, object]:
    """What runs pooled in one cell must share: every setting but the seed and device, and the content of
    every input file (a dev result never averages with a test result)."""
    settings = {key: value for key, value in result.get("settings", {}).items() if key not in ("seed", "device")}
    if isinstance(settings.get("few_shot"), dict):
        settings["few_shot"] = {key: value for key, value in settings["few_shot"].items() if key not in ("seed", "drawn")}  # the draw follows the seed
    inputs = {f"{name} file": (record or {}).get("sha256") for name, record in result.get("inputs", {}).items()}
    return {**settings, **inputs}


def _grid(results: list[tuple[Path, dict]], value) -> dict[str, dict[tuple[str, str], list]]:
    """Row → column → the values of its runs, one per seed (two runs of one seed, or runs that differ in
    more than their seed, are refused)."""
    cells: dict[str, dict] = {}
    origin: dict[tuple, Path] = {}
    first: dict[tuple, tuple[Path, dict]] = {}
    for path, result in sorted(results, key=lambda pr: _row_order(pr[1])):
        row, column, seed = row_name(result), (result["task"], result["trg"]), result.get("settings", {}).get("seed")
        if (row, column, seed) in origin:
            raise DataError(f"two results for '{row}' on {column[0]}-{column[1]}: {origin[row, column, seed]} and {path} (give them different --label)")
        origin[row, column, seed] = path
        pooled_as = _pooled_as(result)
        other_path, other = first.setdefault((row, column), (path, pooled_as))
        differ = sorted(key for key in other.keys() | pooled_as.keys() if other.get(key) != pooled_as.get(key))
        if differ:
            raise DataError(f"'{row}' on {column[0]}-{column[1]}: {other_path} and {path} differ in {', '.join(differ)}, "
                            "not only in their seed (give them different --label)")
        cells.setdefault(row, {}).setdefault(column, []).append(value(result))
    return cells


def _cell(values: list[float]) -> str:
    """mean ± sample standard deviation (n runs); one run has no spread to show."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (n=1)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def _average_header(results: list[tuple[Path, dict]]) -> str:
    metrics = sorted({r["metric"] for _, r in results})
    return "Average" if len(metrics) == 1 else f"Average ({' and '.join(METRIC_NAMES.get(m, m) for m in metrics)} mixed)"


def zero_shot_table(results: list[tuple[Path, dict]]) -> str:
    """Each cell the mean over seeds; the row average is over the row's cell means, marked where the
    row lacks cells that other rows have (its average is then not comparable with theirs)."""
    columns = _columns(results)
    rows = []
    for name, cells in _grid(results, lambda r: r["zero_shot"][r["metric"]]).items():
        means = [statistics.mean(cells[c]) for c in columns if c in cells]
        average = f"{statistics.mean(means):.3f}" + ("" if len(means) == len(columns) else f" ({len(means)} of {len(columns)} cells)")
        rows.append([name, *(_cell(cells.get(c, [])) for c in columns), average])
    return markdown_table(["model · strategy", *(f"{t.upper()} {lang}" for t, lang in columns), _average_header(results)], rows)


def few_shot_table(results: list[tuple[Path, dict]]) -> str | None:
    with_shots = [(p, r) for p, r in results if r["few_shot"]]
    if not with_shots:
        return None
    ks = {c: sorted({int(k) for _, r in with_shots if (r["task"], r["trg"]) == c for k in r["few_shot"]}) for c in _columns(with_shots)}
    grid = _grid(with_shots, lambda r: {0: r["zero_shot"][r["metric"]], **{int(k): s[r["metric"]] for k, s in r["few_shot"].items()}})
    header = ["model · strategy", *(f"{t.upper()} {lang} k={k}" for (t, lang), kk in ks.items() for k in [0, *kk])]
    rows = [[name, *(_cell([run[k] for run in cells.get(c, []) if k in run]) for c, kk in ks.items() for k in [0, *kk])] for name, cells in grid.items()]
    return markdown_table(header, rows)


def transfer_tables(runs_dir: Path) -> str:
    results = load_results(runs_dir)
    metrics = ", ".join(sorted({f"{r['task'].upper()}: {r['metric']}" for _, r in results}))
    spread = "cells: mean ± sample standard deviation over seeds (n runs)"
    parts = [f"## Zero-shot transfer ({len(results)} runs under {runs_dir}; {metrics}; {spread})", "", zero_shot_table(results)]
    few = few_shot_table(results)
    if few:
        parts += ["", "## Few-shot (k labelled target examples after zero-shot training; k=0 is zero-shot)", "", few]
    return "\n".join(parts) + "\n"
