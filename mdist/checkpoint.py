"""Checkpoints that are either complete or invisible, and exact resume (signals: `mdist.preemption`).

Layout under `<run dir>/checkpoints/`:
    step6/             DeepSpeed's files (model/optimiser, ZeRO partitions) + client state
    step6/rank{r}.pt   rank r's own state: python / numpy / torch (and CUDA) RNG, data-loader position
                       (shard streams differ per rank, so they cannot live in rank 0's client state)
    step6/COMPLETE     written by rank 0 after every rank has finished writing
    latest             the tag of the newest complete checkpoint (DeepSpeed's format)

Publishing: every rank writes into the tag directory; a barrier; then rank 0 writes `COMPLETE`
and replaces `latest` atomically (`os.replace` of a temporary file). DeepSpeed's own non-atomic
`latest` is switched off (`save_latest=False`). A save killed half-way leaves a tag directory that
`latest` never names, so `--resume` never picks it up (and it is cleared before that tag is saved
again).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from mdist.engine import barrier

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


def latest_tag(directory: Path) -> str | None:
    """The newest complete checkpoint's tag, or None."""
    marker = directory / LATEST
    if not marker.is_file():
        return None
    tag = marker.read_text(encoding="utf-8").strip()
    return tag if (directory / tag / COMPLETE).is_file() else None


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
            _atomic_write(target / COMPLETE, f"{step}\n")
            _atomic_write(self.directory / LATEST, tag)
        barrier()
        return tag

    def load(self, engine) -> dict | None:
        """Restore engine (weights, optimiser) and this rank's RNG from the latest complete checkpoint.

        Returns the client state (scheduler, MLflow run id, step) merged with this rank's own state
        (data cursor), or None when there is no complete checkpoint.
        """
        tag = latest_tag(self.directory)
        if tag is None:
            return None
        _, client = engine.load_checkpoint(str(self.directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False)
        if client is None:
            raise RuntimeError(f"checkpoint {self.directory / tag} could not be loaded")
        rank_file = self.directory / tag / f"rank{self.rank}.pt"
        if not rank_file.is_file():
            raise RuntimeError(f"{rank_file} is missing: resume with the world size the checkpoint was written with")
        rank_state = torch.load(rank_file, weights_only=False)
        set_rng_state(rank_state.pop("rng"))
        client.update(rank_state)
        client["tag"] = tag
        return client

