"""Subcommands. Each module has `add_parser(subparsers)` that sets `run=` on its parser.

Every module is imported for every command, `--help` included, so a module imports only light modules at
its top (argparse types, name lists, errors); torch, transformers, DeepSpeed, mlflow and whatever loads them
are imported inside its `run` functions. tests/test_cli_speed.py holds every command to this."""
from mdist.commands import baseline, demo, distill, evaluate, finetune, plan, prep, runs, study, sweep, transfer_table
from mdist.errors import UserError

ALL = [distill, plan, sweep, demo, evaluate, prep, finetune, baseline, transfer_table, runs, study]

__all__ = ["ALL", "UserError"]
