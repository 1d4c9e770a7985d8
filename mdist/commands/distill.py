"""`mdist distill --recipe NAME|PATH --out DIR [--set key=value]...`"""
from __future__ import annotations

import argparse
from pathlib import Path

from mdist.argtypes import output_dir
from mdist.recipes import recipe_names
from mdist.rundir import RunLock, check_out_dir, finished_summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("distill", help="distil the teacher into monolingual students (Algorithm 1)")
    parser.add_argument("--recipe", required=True, help=f"a shipped recipe ({', '.join(recipe_names())}) or a YAML path")
    parser.add_argument("--out", required=True, type=output_dir, help="run directory (students/, summary.json, mlflow.db, checkpoints/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.steps=100 (repeatable)")
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in OUT/checkpoints (fresh start when there is none)")
    earlier.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT (its summary, students and checkpoints)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mdist.config import load_run_config  # yaml and the validators: not needed for --help

    cfg = load_run_config(args.recipe, args.overrides)
    with RunLock(args.out):  # one run per directory, held until this run ends (mdist.rundir)
        return _run_locked(args, cfg)


def _run_locked(args: argparse.Namespace, cfg) -> int:
    check_out_dir(args.out, args.resume, args.overwrite)
    finished = finished_summary(args.out, cfg.train.steps) if args.resume else None
    if finished is not None:
        print(f"{args.out} already finished {finished['steps']} steps; nothing to do (raise train.steps to train on)")
        return 0
    from mdist.run import run_distillation  # heavy imports only once the config is valid

    summary = run_distillation(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    if summary.get("preempted"):
        print(f"stopped by signal after step {summary['steps']}; checkpoint saved, continue with --resume")
        return 0
    print(f"distilled {len(summary['students'])} student(s) in {summary['steps']} steps; outputs in {args.out}")
    return 0
