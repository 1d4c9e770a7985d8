"""The shipped run recipes (YAML files beside this module), named by file stem. Light: `mdist distill
--help` lists the names without loading the config machinery."""
from __future__ import annotations

from mdist.shipped import shipped_names


def recipe_names() -> list[str]:
    return shipped_names(__name__)
