"""`mdist sweep --recipe NAME --grid KEY=V1,V2 [--grid ...] [--set KEY=VALUE]... --out DIR`: every combination
of the grid's values as one distillation run, each a child of one MLflow parent run; compare them with
`mdist runs --sweep DIR [--plot PNG]`."""
from __future__ import annotations

import argparse
import json

from mdist.argtypes import output_dir
from mdist.errors import ConfigError
from mdist.recipes import recipe_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="a grid of distillation runs (teacher × student depth and width × strategy) as child runs of one MLflow run")
    parser.add_argument("--recipe", required=True, help=f"a shipped recipe ({', '.join(recipe_names())}) or a YAML path, the base of every run")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", required=True,
                        help="a config key and its values, comma-separated, e.g. students.layers=3,6 (repeatable: the runs are every combination)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key of every run (repeatable)")
    parser.add_argument("--out", required=True, type=output_dir, help="sweep directory (sweep.json, runs/<point>/, logs/, mlflow.db)")
    parser.add_argument("--name", help="MLflow experiment and parent run name (default: the --out directory's name)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mdist.study.local import run_local, study_env
    from mdist.study.state import status_table
    from mdist.sweep import SWEEP_FILE, check_points, expand, parse_grid, read_sweep, stages
    from mdist.tracking import Tracker

    grid = parse_grid(args.grid)
    points = expand(grid)
    check_points(args.recipe, args.overrides, points)
    out = args.out.resolve()
    name = args.name or out.name
    described = {"name": name, "recipe": args.recipe, "grid": grid, "set": args.overrides, "points": points}
    earlier = read_sweep(out) if (out / SWEEP_FILE).is_file() else None
    if earlier is not None and {k: earlier.get(k) for k in described} != described:
        raise ConfigError(f"--out: '{out}' holds another sweep (its {SWEEP_FILE} differs); give a new directory")
    out.mkdir(parents=True, exist_ok=True)
    parent = Tracker(out, name, run_id=earlier and earlier["parent_run_id"], run_name=name, name="sweep")
    if parent.run_id is None:
        raise ConfigError(f"the tracking store ({out / 'mlflow.db'} or MLFLOW_TRACKING_URI) did not create the sweep's parent run")
    (out / SWEEP_FILE).write_text(json.dumps({**described, "parent_run_id": parent.run_id}, indent=1) + "\n", encoding="utf-8")
    parent.log_params({"sweep": {"recipe": args.recipe, "grid": json.dumps(grid), "set": json.dumps(args.overrides), "points": len(points)}})
    planned = stages(args.recipe, args.overrides, points, out, parent.run_id)
    print(f"sweep '{name}' in {out}: {len(planned)} run(s), parent MLflow run {parent.run_id}")
    code = run_local(out, planned, study_env(name, out))
    parent.log_artifact(out / SWEEP_FILE)
    parent.close("FINISHED" if code == 0 else "FAILED")
    print(status_table(out, planned, None)[0], end="")
    print(f"compare them with: mdist runs --sweep {args.out}")
    return code
