"""Command line: `mdist <command>` (also `python -m mdist`). Each command module adds its own parser."""
from __future__ import annotations

import argparse
import sys

from mdist import commands
from mdist.errors import DiskFullError, disk_full, disk_full_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in commands.ALL:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The deepspeed launcher appends --local_rank=N after the subcommand's own arguments; the rank
    # is read from LOCAL_RANK (which it also sets), so the flag is dropped here.
    args = build_parser().parse_args([a for a in argv if not a.startswith("--local_rank=")])
    try:
        return args.run(args) or 0
    except commands.UserError as err:
        _say_error(args.command, err)
        return 2
    except DiskFullError as err:
        _say_error(args.command, err)
        return 1
    except OSError as err:
        if not disk_full(err):
            raise
        _say_error(args.command, disk_full_line(err))
        return 1


def _say_error(command: str, what) -> None:
    """The one error line, newline included, in a single write: `print` writes the text and its newline
    separately, so the lines of several ranks sharing one stderr (torchrun, srun) could run together."""
    sys.stderr.write(f"mdist {command}: error: {what}\n")
    sys.stderr.flush()
