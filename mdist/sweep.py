"""`mdist sweep`: a grid of distillation runs (teacher size × student depth and width × strategy, or any
config keys) as child runs of one MLflow parent run.

Each grid point is one `mdist distill` with the recipe, the sweep's `--set` items and the point's values,
run as a stage of `mdist.study.local` (its own process, so its peak memory is its own; a log and a state
record each; a re-run skips the points already done). Layout of the sweep directory:
    sweep.json                   the grid, its points and the parent run id
    runs/<point>/                each point's run directory
    logs/, stages/, mlflow.db    as in a study
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from mdist.config import load_run_config
from mdist.errors import ConfigError
from mdist.study.stages import Stage

SWEEP_FILE = "sweep.json"


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """["students.layers=2,4", "strategy=monoshot,hinton"] -> {"students.layers": ["2", "4"], ...}: values
    split at commas, each read later as YAML like a `--set` value."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid expects KEY=VALUE[,VALUE...], got '{item}'")
        if key in grid:
            raise ConfigError(f"--grid names '{key}' twice; give its values once, comma-separated")
        grid[key] = [v.strip() for v in values.split(",")]
        if "" in grid[key]:
            raise ConfigError(f"--grid {key}: an empty value in '{values}'")
    if not grid:
        raise ConfigError("--grid: give at least one KEY=VALUE[,VALUE...]")
    return grid


def point_name(index: int, point: dict[str, str]) -> str:
    """A run directory and MLflow run name: its index, then its values (a path by its last part), each
    reduced to letters, digits, '_' and '-'."""
    values = [re.sub(r"[^A-Za-z0-9_-]+", "_", Path(v).name or v).strip("_") for v in point.values()]
    return "-".join([f"{index:02d}", *values])


def expand(grid: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """Every combination of the grid's values, by point name, first key slowest."""
    return {point_name(i, dict(zip(grid, values))): dict(zip(grid, values)) for i, values in enumerate(itertools.product(*grid.values()))}


def check_points(recipe: str, overrides: list[str], points: dict[str, dict[str, str]]) -> None:
    """Validate every point's config as `mdist distill` will, before the first one runs."""
    for name, point in points.items():
        try:
            load_run_config(recipe, [*overrides, *point_sets(point)])
        except ConfigError as err:
            raise ConfigError(f"--grid point {name} ({', '.join(point_sets(point))}): {err}") from None


def point_sets(point: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in point.items()]


def stages(recipe: str, overrides: list[str], points: dict[str, dict[str, str]], out: Path, parent_run_id: str) -> list[Stage]:
    """One distillation stage per point, a child of `parent_run_id`; --resume continues an interrupted point."""
    found = []
    for name, point in points.items():
        run_dir = out / "runs" / name
        sets = [*overrides, *point_sets(point), f"tracking.parent_run_id={parent_run_id}"]
        argv = ["distill", "--recipe", recipe, "--out", str(run_dir), "--resume", *(a for s in sets for a in ("--set", s))]
        found.append(Stage(f"distill-{name}", "distill", argv, str(run_dir / "summary.json")))
    return found


def read_sweep(out: Path) -> dict:
    path = out / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist (is '{out}' a sweep directory? `mdist sweep` writes it)")
    return json.loads(path.read_text(encoding="utf-8"))
