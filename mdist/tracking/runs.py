"""`mdist runs`: distillation runs side by side, from any tracking store, and `mdist runs sync`.

One row per distillation run (a run with a `strategy` param and no parent): strategy, teacher,
students, steps, tokens, the final loss per (student, language), and the scores of its child runs
(`mdist eval` retrieval, `mdist finetune` zero-shot transfer). A sweep's children (`mdist sweep`)
compare in a table of their own: grid values, student size, throughput, memory, loss, perplexity.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from mdist.errors import TrackingUnreachableError
from mdist.markdown import markdown_table
from mdist.tracking.journal import Journal, journals
from mdist.tracking.sender import send_pending, unreachable
from mdist.tracking.tracker import client_for

PARENT = "mlflow.parentRunId"
COLUMNS = ["run", "id", "status", "strategy", "teacher", "students", "steps", "tokens", "final loss", "retrieval", "downstream"]


def search(client, experiments: list[str] | None, tags: dict[str, str]) -> list:
    """Runs of the named experiments (default: all) whose tags have the given values."""
    found = client.search_experiments()
    ids = [e.experiment_id for e in found if experiments is None or e.name in experiments]
    if not ids:
        return []
    where = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return list(client.search_runs(ids, filter_string=where, max_results=5000))


def _short(value: float) -> str:
    return f"{value:.3f}".lstrip("0") if 0 <= value < 1 else f"{value:.3g}"


def _bare(value: str) -> str:
    """"['en', 'tr']" -> "en,tr" (a list param as MLflow stores it)."""
    return re.sub(r"[\[\]' ]", "", value)


def summarise(run, children: list) -> dict[str, str]:
    params, metrics = run.data.params, run.data.metrics
    groups = " ".join(f"{key.rsplit('.', 1)[1]}:{_bare(value)}" for key, value in sorted(params.items()) if key.startswith("students.groups."))
    losses = sorted((k[: -len("/loss")], v) for k, v in metrics.items() if k.endswith("/loss"))
    retrieval, downstream = [], []
    for child in children:
        for key, value in sorted(child.data.metrics.items()):
            hit = re.fullmatch(r"retrieval\.(.+)\.(cosine|bertscore)\.all", key)
            if hit:
                retrieval.append(f"{hit[1]} {'bert' if hit[2] == 'bertscore' else 'cos'} {_short(value)}")
            hit = re.fullmatch(r"(\w+)\.(\w+)\.zero_shot\.\w+", key)
            if hit:
                downstream.append(f"{hit[1]}-{hit[2]} {child.data.params.get('strategy', '?')} {_short(value)}")
    return {
        "run_id": run.info.run_id, "run": run.info.run_name or "", "id": run.info.run_id[:8], "status": run.info.status,
        "strategy": params.get("strategy", ""), "teacher": Path(params.get("teacher.path", "")).name,
        "students": groups, "steps": params.get("train.steps", ""),
        "tokens": f"{metrics['tokens']:,.0f}" if "tokens" in metrics else "",
        "final loss": " · ".join(f"{pair} {value:.3f}" for pair, value in losses),
        "retrieval": " · ".join(retrieval), "downstream": " · ".join(downstream),
    }


def runs_table(client, experiments: list[str] | None = None, tags: dict[str, str] | None = None) -> list[dict[str, str]]:
    runs = search(client, experiments, tags or {})
    children: dict[str, list] = {}
    for run in search(client, None, {}):  # children may live in another experiment than their parent
        if PARENT in run.data.tags:
            children.setdefault(run.data.tags[PARENT], []).append(run)
    distillations = [r for r in runs if "strategy" in r.data.params and PARENT not in r.data.tags]
    return [summarise(run, children.get(run.info.run_id, [])) for run in distillations]


def markdown(rows: list[dict[str, str]], columns: list[str] = COLUMNS) -> str:
    return markdown_table(columns, ([row[c] for c in columns] for row in rows)) + "\n"


def plot_losses(client, run_ids: list[str], pattern: str, out: Path) -> int:
    """Loss curves (metrics matching `pattern`) of the given runs in one PNG; returns the curve count."""
    from matplotlib.figure import Figure  # no GUI backend, no pyplot state

    fig = Figure(figsize=(8, 5), layout="tight")
    ax = fig.subplots()
    curves = 0
    for run_id in run_ids:
        run = client.get_run(run_id)
        for key in sorted(k for k in run.data.metrics if re.search(pattern, k)):
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            ax.plot([m.step for m in history], [m.value for m in history], label=f"{run.info.run_name or run_id[:8]} {key}")
            curves += 1
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    _write_png(fig, out)
    return curves


def _write_png(fig, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


SWEEP_COLUMNS = ["run", "id", "status", "student params", "steps", "tokens/s", "peak GiB", "final loss", "held-out ppl"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def sweep_rows(client, parent_id: str) -> tuple[list[str], list[dict]]:
    """The grid's keys and one row per child run of the sweep `parent_id`, by run name, with numbers as numbers:
    tokens/s is the median of the logged steps after the first (compilation, allocation); peak memory the
    GPU's allocated peak where logged, else the process's peak resident memory (`peak kind`: gpu or rss);
    final loss and held-out perplexity the means over the (student, language) pairs of their last values."""
    grid = list(json.loads(client.get_run(parent_id).data.params.get("sweep.grid", "{}")))
    children = sorted(search(client, None, {PARENT: parent_id}), key=lambda r: r.info.run_name or "")
    rows = []
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        per_student = [int(v) for k, v in params.items() if k.startswith("run.parameters_per_student.")]
        speeds = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "tokens_per_s"), key=lambda m: m.step)]
        kind = "gpu" if "peak_memory_gib" in metrics else "rss"
        peaks = client.get_metric_history(child.info.run_id, "peak_memory_gib" if kind == "gpu" else "peak_rss_gib")
        rows.append({
            "run_id": child.info.run_id, "run": child.info.run_name or "", "id": child.info.run_id[:8], "status": child.info.status,
            **{key: params.get(key, "") for key in grid},
            "student params": max(per_student) if per_student else int(params.get("run.student_parameters", 0)) or None,
            "steps": params.get("train.steps", ""),
            "tokens/s": statistics.median(speeds[1:] or speeds) if speeds else math.nan,
            "peak GiB": max((m.value for m in peaks), default=math.nan), "peak kind": kind,
            "final loss": _mean([v for k, v in metrics.items() if re.fullmatch(r"[^/]+/[^/]+/loss", k)]),
            "held-out ppl": _mean([v for k, v in metrics.items() if re.fullmatch(r"heldout/.+/ppl", k)]),
        })
    return grid, rows


def sweep_markdown(grid: list[str], rows: list[dict]) -> str:
    def shown(row: dict, column: str) -> str:
        value = row[column]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if column == "peak GiB":
            return f"{value:.3f} ({row['peak kind']})"
        if isinstance(value, float):
            return f"{value:,.0f}" if column == "tokens/s" else f"{value:.3f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    columns = [*SWEEP_COLUMNS[:3], *grid, *SWEEP_COLUMNS[3:]]
    return markdown([{c: shown(row, c) for c in columns} for row in rows], columns)


def plot_sweep(grid: list[str], rows: list[dict], out: Path) -> int:
    """Three panels against student parameters: final loss, held-out perplexity, tokens/s; one series per
    combination of the grid values that are not the student's shape (teacher, strategy, ...). Returns the
    number of series drawn (a panel with no values draws none)."""
    from matplotlib.figure import Figure

    series_keys = [key for key in grid if not key.startswith("students.")]
    series: dict[str, list[dict]] = {}
    for row in rows:
        series.setdefault(" ".join(f"{key}={row[key]}" for key in series_keys) or "runs", []).append(row)
    fig = Figure(figsize=(15, 4.5), layout="tight")
    axes = fig.subplots(1, 3)
    drawn = 0
    for ax, metric in zip(axes, ("final loss", "held-out ppl", "tokens/s")):
        for label, members in series.items():
            points = sorted((r["student params"], r[metric]) for r in members if r["student params"] and not math.isnan(r[metric]))
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
                drawn += 1
        ax.set_xlabel("student parameters")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} against student size")
        if ax.lines:
            ax.legend(fontsize=7)
    _write_png(fig, out)
    return drawn


def sync(run_dir: Path, uri: str | None = None) -> list[tuple[Path, int, str]]:
    """Send every journal's waiting records (to `uri`, else the store each run logged to);
    returns (journal, records sent, run id). A distillation summary without a run id gets it.
    A server that does not answer raises TrackingUnreachableError saying how many records wait."""
    sent = []
    for path in journals(run_dir):
        journal = Journal(path)
        target = uri or journal.header["uri"]
        try:
            count = send_pending(client_for(target), journal)
        except Exception as err:
            if not unreachable(err):
                raise
            waiting = sum(len(Journal(other).pending()) for other in journals(run_dir))
            raise TrackingUnreachableError(f"the tracking server {target} is unreachable; {waiting} record(s) wait in {run_dir}, "
                                           "sent by this command once it answers") from None
        sent.append((path, count, journal.run_id))
        summary_file = run_dir / "summary.json"
        if path.stem == "distill" and summary_file.is_file():
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
            if summary.get("mlflow_run_id") is None:
                summary["mlflow_run_id"] = journal.run_id
                summary_file.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return sent
