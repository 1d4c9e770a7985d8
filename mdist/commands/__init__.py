"""Subcommands. Each module has `add_parser(subparsers)` that sets `run=` on its parser."""
from mdist.commands import baseline, demo, distill, evaluate, finetune, prep, runs, study, transfer_table
from mdist.errors import UserError

ALL = [distill, demo, evaluate, prep, finetune, baseline, transfer_table, runs, study]

__all__ = ["ALL", "UserError"]
