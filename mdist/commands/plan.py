"""`mdist plan --recipe NAME|PATH [--set key=value]... --gpus N --gpu-mem GB`: will the run fit, before anything loads.
`mdist plan --table`: the README's table, every teacher size on 80 GB GPUs."""
from __future__ import annotations

import argparse
import json
import sys

from mdist.argtypes import at_least
from mdist.recipes import recipe_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plan", help="per-rank memory by part, the ZeRO stage / offload / micro-batch that fit, expected tokens/s")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--recipe", help=f"a shipped recipe ({', '.join(recipe_names())}) or a YAML path")
    what.add_argument("--table", action="store_true", help="the table for every teacher size's recipe (GPUs needed, layout, students, tokens/s) in markdown")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--gpus", type=at_least(1), default=1, help="GPUs in all (ranks)")
    parser.add_argument("--gpu-mem", type=at_least(0, float, strict=True), default=80.0, help="GiB of memory per GPU")
    parser.add_argument("--cpu", action="store_true", help="plan CPU ranks instead (fp32, the teacher as teacher.dtype says; no CUDA context; all of --gpu-mem per rank), as `mdist distill` checks them against dist.memory_gib")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object (the keys logged to MLflow)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mdist.plan import plan_recipe, readme_table  # the config machinery: not needed for --help

    if args.table:
        print(readme_table(args.gpu_mem))
        return 0
    result = plan_recipe(args.recipe, args.overrides, args.gpus, args.gpu_mem, gpu=not args.cpu)
    print(json.dumps(result.as_dict(), indent=1) if args.json else result.table())
    if result.fitting is None:
        sys.stderr.write(f"mdist plan: error: nothing fits on {args.gpus} {'CPU rank' if args.cpu else 'GPU'}(s) of {args.gpu_mem:g} GiB: the smallest layout needs more; add {'ranks' if args.cpu else 'GPUs'}\n")
        return 2
    return 0
