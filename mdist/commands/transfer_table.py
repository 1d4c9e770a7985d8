"""`mdist transfer-table --runs DIR [--out table.md]`: the thesis's downstream tables from finetune results."""
from __future__ import annotations

import argparse
from pathlib import Path

from mdist.argtypes import DefaultsOnce, output_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("transfer-table", help="Markdown tables (thesis 4.4-4.6 layout) of the finetune results under a directory", formatter_class=DefaultsOnce)
    parser.add_argument("--runs", type=Path, required=True, help="directory searched for result.json files")
    parser.add_argument("--out", type=output_file, help="Markdown file to write (default: print only)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mdist.checkpoint_files import write_atomically
    from mdist.transfer.table import transfer_tables

    text = transfer_tables(args.runs)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out, text)
        print(f"wrote {args.out}")
    return 0
