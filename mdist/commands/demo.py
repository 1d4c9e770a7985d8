"""`mdist demo --out DIR`: the embedded main job (synthetic corpus, cross-lingual tiny teacher, MonoShot beside
no-alignment students, retrieval and zero-shot transfer in one table)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mdist.argtypes import output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the embedded default job on the CPU (no network, no files needed)")
    parser.add_argument("--out", type=output_dir, default=Path("demo-out"), help="output directory (an earlier demo there is replaced)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key of the demo run")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mdist.demo import run_demo

    run_demo(args.out, overrides=args.overrides)
    return 0
