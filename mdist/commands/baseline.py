"""`mdist baseline --teacher DIR --layers 6 --init top --out DIR`: a teacher-layer model without distillation."""
from __future__ import annotations

import argparse
from pathlib import Path

from mdist.argtypes import DefaultsOnce, output_dir
from mdist.strategies import INIT_MAPPINGS


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("baseline", help="export an M-layer model initialised from the teacher's layers, without distillation", formatter_class=DefaultsOnce)
    parser.add_argument("--teacher", type=Path, required=True, help="teacher model directory (XLM-R family)")
    parser.add_argument("--layers", type=int, default=6, help="layers of the baseline")
    parser.add_argument("--init", choices=INIT_MAPPINGS, default="uniform", help="which teacher layers: uniform, top or bottom")
    parser.add_argument("--out", type=output_dir, required=True, help="output model directory")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mdist.baseline import export_baseline

    provenance = export_baseline(args.teacher, args.layers, args.init, args.out)
    print(f"wrote {args.out}: {args.layers} layers from teacher layers {provenance['teacher_layers']} ({args.init})")
    return 0
