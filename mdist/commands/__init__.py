"""Subcommands. Each module has `add_parser(subparsers)` that sets `run=` on its parser."""
from mdist.commands import demo, distill
from mdist.errors import UserError

ALL = [distill, demo]

__all__ = ["ALL", "UserError"]
