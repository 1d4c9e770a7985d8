"""argparse types for numeric options: a value out of range stops with argparse's one line (exit
code 2) naming the option, before anything is read or built. Light, as every parser definition must
be: `mdist --help` and argument errors answer without loading torch."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

from mdist.errors import output_problem


def at_least(low: float, kind: type = int, strict: bool = False, high: float = math.inf) -> Callable[[str], float]:
    """A parser of `kind` values >= `low` (> `low` when `strict`) and <= `high`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):  # nan or inf: a run that trains on it diverges and still writes a "result"
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value
    return parse


class DefaultsOnce(argparse.HelpFormatter):
    """`--help` says each option's default once: `(default: X)` is appended unless the help text already
    tells it in words, or there is none to tell (a required option, a flag, None, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if "default" in text or action.required or not action.option_strings or default is None or default is False or default == [] or default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def output_path(want_dir: bool) -> Callable[[str], Path]:
    """A parser of an output directory (`want_dir`) or file: one that cannot be written stops here."""
    def parse(text: str) -> Path:
        problem = output_problem(Path(text), want_dir)
        if problem:
            raise argparse.ArgumentTypeError(f"'{text}' {problem}")
        return Path(text)
    return parse


output_dir, output_file = output_path(want_dir=True), output_path(want_dir=False)


def add_device_option(parser: argparse._ActionsContainer) -> None:
    """`--device`, by default `auto`, which `chosen_device` resolves once the command runs: asking torch
    for a GPU while the parser is defined would load torch for `--help` too."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto: cuda when a GPU is visible, else cpu")


def chosen_device(name: str) -> str:
    """The `--device` value with `auto` resolved."""
    if name != "auto":
        return name
    import torch  # noqa: PLC0415 (light module; the command that asks is about to use torch)

    return "cuda" if torch.cuda.is_available() else "cpu"
