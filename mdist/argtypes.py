"""argparse types for numeric options: a value out of range stops with argparse's one line (exit
code 2) naming the option, before anything is read or built."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def at_least(low: float, kind: type = int, strict: bool = False) -> Callable[[str], float]:
    """A parser of `kind` values >= `low` (> `low` when `strict`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value
    return parse
