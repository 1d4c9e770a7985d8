"""Derived facts of a run that its config does not state, recorded as MLflow params beside it."""
from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from torch import nn

SOURCE = Path(__file__).resolve().parents[2]


def source_commit() -> str:
    """Short sha of mdist's checkout, with "-dirty" when tracked files differ; "unknown" outside git."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=SOURCE)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return (sha or "unknown") + ("-dirty" if sha and dirty else "")


def versions(*packages: str) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def parameter_count(*modules: nn.Module) -> int:
    """Parameters of the modules together, each shared tensor once (ZeRO-3 partitions: full size)."""
    unique = {id(p): p for m in modules for p in m.parameters()}
    return sum(getattr(p, "ds_numel", p.numel()) for p in unique.values())
