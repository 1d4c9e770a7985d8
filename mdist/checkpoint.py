"""Checkpoints that are either complete or invisible, and exact resume (signals: `mdist.preemption`).

Layout under `<run dir>/checkpoints/`:
    step6/             DeepSpeed's files (model/optimiser, ZeRO partitions) + client state
    step6/rank{r}.pt   rank r's own state: python / numpy / torch (and CUDA) RNG, data-loader position
                       (shard streams differ per rank, so they cannot live in rank 0's client state)
    step6/COMPLETE     written by rank 0 after every rank has finished writing
    latest             the tag of the newest complete checkpoint (DeepSpeed's format)

Publishing: every rank writes into the tag directory; a barrier; then rank 0 writes `COMPLETE`
(the step and every file of the checkpoint with its size) and replaces `latest` atomically
(`os.replace` of a temporary file). DeepSpeed's own non-atomic `latest` is switched off
(`save_latest=False`). A save killed half-way leaves a tag directory without `COMPLETE`, so
`--resume` never picks it up (and it is cleared before that tag is saved again).

Resuming: from the newest complete checkpoint. `latest` names it unless something went wrong (a
marker or `latest` lost, a crash between the two writes); then the newest complete one is taken
anyway and the fallback is said. Before DeepSpeed reads anything, the files listed in `COMPLETE`
are checked, so a missing or truncated file is named with what to do instead of a traceback.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from mdist.engine import barrier
from mdist.errors import CheckpointError

LATEST = "latest"
COMPLETE = "COMPLETE"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_tags(directory: Path) -> list[str]:
    """Tags of the complete checkpoints in `directory`, oldest first."""
    steps = [int(m.group(1)) for path in directory.glob("step*") if (m := re.fullmatch(r"step(\d+)", path.name)) and (path / COMPLETE).is_file()]
    return [f"step{step}" for step in sorted(steps)]


def latest_tag(directory: Path) -> str | None:
    """The newest complete checkpoint's tag, or None."""
    tags = complete_tags(directory)
    return tags[-1] if tags else None


def fallback_note(directory: Path, tag: str) -> str | None:
    """Why `tag` is not the checkpoint `latest` names (None when it is)."""
    marker = directory / LATEST
    named = marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
    if named == tag:
        return None
    why = f"{marker} is missing" if named is None else f"{marker} names '{named}', which is not a newer complete checkpoint"
    return f"{why}; using the newest complete checkpoint, {directory / tag}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Checkpointer:
    """Save and restore the whole training state through the student DeepSpeed engine."""

    def __init__(self, directory: Path, rank: int):
        self.directory = directory
        self.rank = rank

    def save(self, engine, step: int, client_state: dict, rank_state: dict) -> str:
        tag = f"step{step}"
        target = self.directory / tag
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            if target.exists() and latest_tag(self.directory) != tag:
                shutil.rmtree(target)  # a leftover of an interrupted save
        barrier()
        engine.save_checkpoint(str(self.directory), tag=tag, client_state={**client_state, "step": step}, save_latest=False)
        target.mkdir(parents=True, exist_ok=True)
        torch.save({"rng": rng_state(), **rank_state}, target / f"rank{self.rank}.pt")
        barrier()  # every rank has written everything
        if self.rank == 0:
            files = {str(path.relative_to(target)): path.stat().st_size for path in sorted(target.rglob("*")) if path.is_file()}
            _atomic_write(target / COMPLETE, json.dumps({"step": step, "files": files}, indent=1))
            _atomic_write(self.directory / LATEST, tag)
        barrier()
        return tag

    def load(self, engine) -> dict | None:
        """Restore engine (weights, optimiser) and this rank's RNG from the newest complete checkpoint.

        Returns the client state (scheduler, MLflow run id, step) merged with this rank's own state
        (data cursor) and `tag` / `fallback` (a note when `latest` named another), or None when
        there is no complete checkpoint.
        """
        tag = latest_tag(self.directory)
        if tag is None:
            return None
        target = self.directory / tag
        self._verify(target)
        try:
            _, client = engine.load_checkpoint(str(self.directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False)
        except Exception as err:  # DeepSpeed and torch raise many types for an unreadable file
            raise CheckpointError(f"cannot load {_unreadable(target) or target}: {type(err).__name__}: {err}; {self._instead(tag)}") from None
        if client is None:
            raise CheckpointError(f"DeepSpeed found no model states in {target}; {self._instead(tag)}")
        rank_file = target / f"rank{self.rank}.pt"
        try:
            rank_state = torch.load(rank_file, weights_only=False)
        except Exception as err:
            raise CheckpointError(f"cannot read {rank_file}: {type(err).__name__}: {err}; {self._instead(tag)}") from None
        set_rng_state(rank_state.pop("rng"))
        client.update(rank_state)
        client.update(tag=tag, fallback=fallback_note(self.directory, tag))
        return client

    def _verify(self, target: Path) -> None:
        """Every file `COMPLETE` lists is there with its size; the world size is the one that wrote it."""
        try:
            marker = json.loads((target / COMPLETE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            marker = None
        listed = marker.get("files", {}) if isinstance(marker, dict) else {}  # older markers hold only the step
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        ranks = sum(1 for name in listed if re.fullmatch(r"rank\d+\.pt", name))
        if ranks and ranks != world:
            raise CheckpointError(f"{target} was written by {ranks} rank(s), this run has {world}: resume with {ranks}")
        for name in [*listed, f"rank{self.rank}.pt"]:
            path = target / name
            if not path.is_file():
                raise CheckpointError(f"{path} is missing from a complete checkpoint; {self._instead(target.name)}")
            if name in listed and path.stat().st_size != listed[name]:
                raise CheckpointError(f"{path} has {path.stat().st_size} bytes, {listed[name]} were written (truncated or replaced); {self._instead(target.name)}")

    def _instead(self, tag: str) -> str:
        """What to do about an unusable complete checkpoint."""
        older = [t for t in complete_tags(self.directory) if int(t[4:]) < int(tag[4:])]
        then = f"resume from {older[-1]}" if older else "start from step 0"
        return f"remove {self.directory / tag} to {then}, or start afresh with --overwrite"


def _unreadable(target: Path) -> Path | None:
    """The first `.pt` file in `target` that torch cannot open (only its index is read), to name it."""
    for path in sorted(target.glob("*.pt")):
        try:
            torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except Exception:
            return path
    return None
