"""The shipped run recipes (YAML files beside this module), named by file stem. Light: `mdist distill
--help` lists the names without loading the config machinery."""
from __future__ import annotations

from importlib import resources


def recipe_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
