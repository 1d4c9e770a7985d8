"""Subcommands. Each module has `add_parser(subparsers)` that sets `run=` on its parser."""
from mdist.commands import demo, distill, evaluate, prep
from mdist.errors import UserError

ALL = [distill, demo, evaluate, prep]

__all__ = ["ALL", "UserError"]
