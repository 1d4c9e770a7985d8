"""Where `mdist prep` writes a language's shard manifest: shared by the writer, the loader and config
validation, which checks a shard directory before any model is built without importing the data stack."""
from __future__ import annotations

from pathlib import Path


def manifest_path(out_dir: Path, lang: str) -> Path:
    return Path(out_dir) / f"{lang}.manifest.json"
