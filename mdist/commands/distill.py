"""`mdist distill --recipe NAME|PATH --out DIR [--set key=value]...`"""
from __future__ import annotations

import argparse
from pathlib import Path

from mdist.config import load_run_config, recipe_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("distill", help="distil the teacher into monolingual students (Algorithm 1)")
    parser.add_argument("--recipe", required=True, help=f"a shipped recipe ({', '.join(recipe_names())}) or a YAML path")
    parser.add_argument("--out", required=True, type=Path, help="run directory (students/, summary.json, mlflow.db, checkpoints/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=100 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in OUT/checkpoints (fresh start when there is none)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.recipe, args.overrides)
    from mdist.run import run_distillation  # heavy imports only once the config is valid

    summary = run_distillation(cfg, args.out, resume=args.resume)
    if summary.get("preempted"):
        print(f"stopped by signal after step {summary['steps']}; checkpoint saved, continue with --resume")
        return 0
    print(f"distilled {len(summary['students'])} student(s) in {summary['steps']} steps; outputs in {args.out}")
    return 0
