"""The YAML files shipped inside a package (recipes, studies), by name. Light: `--help` texts list them
without loading the config machinery."""
from __future__ import annotations

from importlib import resources


def shipped_names(package: str) -> list[str]:
    """The YAML files shipped in `package`, without their suffix."""
    return sorted(p.name[: -len(".yaml")] for p in resources.files(package).iterdir() if p.name.endswith(".yaml"))
