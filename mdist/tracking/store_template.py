"""A run directory's own sqlite store starts as a copy of an empty one.

MLflow builds a new sqlite store by running all its schema migrations: about 0.9 s of CPU here, more
than the rest of a short tracked run's tracking together. Every run directory holds its own store
(`<run dir>/mlflow.db`), so every distillation, evaluation and fine-tuning would pay it. The first
store built for an MLflow version is copied, still empty, into the user's cache (`$XDG_CACHE_HOME/mdist`,
else `~/.cache/mdist`); later stores start as a copy of it. The one row such a store holds of its own,
MLflow's "Default" experiment, gets this store's artifact location and the time of the copy.

Where the cache cannot be written, a store is built as MLflow builds it; nothing else changes.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdist"


def _template(version: str) -> Path:
    return cache_dir() / f"mlflow-{version}-empty.db"


def _copy_into_place(source: Path, target: Path, replace: bool) -> bool:
    """Copy `source` to `target` atomically: a concurrent reader sees the whole file or none. Without
    `replace`, a `target` that appeared meanwhile (another stage of a study creating the same store,
    perhaps already logging to it) is kept and the copy dropped. Whether the copy is now `target`."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, partial)
    if replace:
        os.replace(partial, target)
        return True
    try:
        os.link(partial, target)  # fails if target exists: never overwrites
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: a plain rename, as close as it allows
        os.replace(partial, target)
        return True
    finally:
        partial.unlink(missing_ok=True)


def _build(path: Path, artifact_root: str) -> None:
    """An empty store at `path`, built by MLflow (its migrations run)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{path}", artifact_root)
    store.engine.dispose()


def create_store(path: Path, artifact_root: str) -> None:
    """Create the empty sqlite store `path` (absent) with artifacts under `artifact_root` (a URI). Safe
    when several processes (the stages of a study) create the same store at once: one copy wins, whole."""
    import mlflow

    template = _template(mlflow.__version__)
    if not template.is_file():
        built = path.with_name(f".{path.name}.{os.getpid()}.build")  # beside it: concurrent creators never share a half-built store
        try:
            _build(built, artifact_root)
            try:
                template.parent.mkdir(parents=True, exist_ok=True)
                _copy_into_place(built, template, replace=True)
            except OSError:
                pass  # no cache here: the next store is built by MLflow again
            _copy_into_place(built, path, replace=False)
        finally:
            built.unlink(missing_ok=True)
        return
    if not _copy_into_place(template, path, replace=False):
        return  # created meanwhile by another process of the same study
    now = int(time.time() * 1000)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? WHERE experiment_id = 0",
                   (f"{artifact_root.rstrip('/')}/0", now, now))
    db.close()
