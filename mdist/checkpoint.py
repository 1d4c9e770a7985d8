"""Checkpoints that are either complete or invisible, and exact resume (signals: `mdist.preemption`).

Layout under `<run dir>/checkpoints/`:
    step6/             DeepSpeed's files (model/optimiser, ZeRO partitions) + client state
    step6/rank{r}.pt   rank r's own state: python / numpy / torch (and CUDA) RNG, data-loader position
                       (shard streams differ per rank, so they cannot live in rank 0's client state)
    step6/COMPLETE     written by rank 0 after every rank has finished writing
    latest             the tag of the newest complete checkpoint (DeepSpeed's format)

Publishing: every rank writes into the tag directory, hashing (sha256) each file as its bytes go
out (DeepSpeed's checkpoint engine is routed through `hashed_save`, so nothing is read back); the
ranks' digests are gathered; then rank 0 writes `COMPLETE` (the step, every file of the checkpoint
with its size and its sha256) and replaces `latest` atomically (`os.replace` of a temporary
file). DeepSpeed's own non-atomic `latest` is switched off (`save_latest=False`). A save killed
half-way leaves a tag directory without `COMPLETE`, so `--resume` never picks it up (and it is
cleared before that tag is saved again, as is a checkpoint saved again after it did not verify).

A failed write (a full disk or quota, mostly) is recorded on its rank instead of raised, so that
DeepSpeed's barriers between its writes stay matched; that rank writes nothing more. The failures
travel with the digests, and again after rank 0 publishes: if any rank failed, nothing is published,
rank 0 removes the incomplete tag directory and every rank raises the same one line (the file, the
space it needed, the space free; `DiskFullError`), `latest` and the newest complete checkpoint intact.

Resuming: from the newest complete checkpoint. `latest` names it unless something went wrong (a
marker or `latest` lost, a crash between the two writes); then the newest complete one is taken
anyway and the fallback is said. Before DeepSpeed reads anything, the files listed in `COMPLETE`
are checked, so a missing or truncated file is named with what to do instead of a traceback, and
their contents are hashed (each rank a share of the bytes) and compared with `COMPLETE`: a file
whose bytes changed since it was written (bit rot, a half-synced copy) is named and the newest older
checkpoint that verifies is used instead, said. A `COMPLETE` of an older mdist has no hashes: its
sizes are checked, and that only sizes were, said. `mdist runs verify RUN_DIR` checks every
checkpoint of a run directory the same way without training.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from mdist.checkpoint_files import COMPLETE, HASH, complete_tags, file_digest, mismatches, read_marker, share_of_files, size_problems, write_atomically
from mdist.checkpoint_writes import Writes, first_failure
from mdist.engine import barrier, gather_objects, world_size
from mdist.errors import CheckpointError

LATEST = "latest"


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


class Checkpointer:
    """Save and restore the whole training state through the student DeepSpeed engine."""

    def __init__(self, directory: Path, rank: int):
        self.directory = directory
        self.rank = rank

    def save(self, engine, step: int, client_state: dict, rank_state: dict) -> str:
        """Write checkpoint `step{step}` on every rank, then publish it (rank 0) only if every rank wrote
        all of its files. A full disk (or any write error) on any rank: no rank publishes, rank 0 removes
        the incomplete tag directory, every rank raises the same error (DiskFullError for ENOSPC/EDQUOT)."""
        tag = f"step{step}"
        target = self.directory / tag
        writes = Writes(target)
        if self.rank == 0:
            writes.attempt(target, lambda: self._prepare(target))
        barrier(f"checkpoint {tag} cleared")
        with writes.routing(engine):
            engine.save_checkpoint(str(self.directory), tag=tag, client_state={**client_state, "step": step}, save_latest=False)
        writes.save({"rng": rng_state(), **rank_state}, target / f"rank{self.rank}.pt")
        gathered = gather_objects((writes.written, writes.failure))  # collective: every rank has written everything, or failed
        failure = first_failure(failed for _, failed in gathered)
        if failure is None and self.rank == 0:
            writes.attempt(target / COMPLETE, lambda: self._publish(target, step, [written for written, _ in gathered]))
            failure = writes.failure
        failure = first_failure(gather_objects(failure))  # collective: rank 0 published, or every rank knows it did not
        if failure is not None:
            if self.rank == 0:
                shutil.rmtree(target, ignore_errors=True)  # never a half-written checkpoint; frees its space
            barrier(f"checkpoint {tag} abandoned")
            raise failure.error(self.directory / tag, latest_tag(self.directory))
        return tag

    def _prepare(self, target: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a leftover of an interrupted save, or a checkpoint that did not verify saved again:
            shutil.rmtree(target)  # its old COMPLETE must not vouch for files being rewritten

    def _publish(self, target: Path, step: int, gathered: list[dict[str, tuple[int, str]]]) -> None:
        """Write `COMPLETE` (sizes and hashes of every file, `gathered` from the ranks where they hashed
        while writing), then point `latest` at the checkpoint."""
        files = {str(path.relative_to(target)): path.stat().st_size for path in sorted(target.rglob("*")) if path.is_file() and path.name != COMPLETE}
        hashes = {}
        for name, (size, digest) in (item for part in gathered for item in part.items()):
            hashes[name] = digest if files.get(name) == size else None
        for name in files:  # written some other way (or rewritten since): hashed from disk
            if hashes.get(name) is None:
                hashes[name] = file_digest(target / name)
        marker = {"step": step, "files": files, HASH: {name: hashes[name] for name in files}}
        write_atomically(target / COMPLETE, json.dumps(marker, indent=1))
        write_atomically(self.directory / LATEST, target.name)

    def load(self, engine) -> dict | None:
        """Restore engine (weights, optimiser) and this rank's RNG from the newest complete checkpoint
        whose files verify.

        Returns the client state (scheduler, MLflow run id, step) merged with this rank's own state
        (data cursor) and `tag` / `notes` (lines to say: a checkpoint skipped because a file's bytes
        changed, `latest` naming another, a marker without hashes), or None when there is no
        complete checkpoint. Collective: every rank verifies a share of the files.
        """
        tags = complete_tags(self.directory)
        if not tags:
            return None
        notes = []
        for tag in reversed(tags):
            target = self.directory / tag
            self._verify(target)
            found = self._verify_contents(target)
            if not found:
                break
            notes.append(f"{'; '.join(found)}; not resuming from {target}")
        else:
            raise CheckpointError(f"{notes[0]}, and no older checkpoint in {self.directory} verifies: start afresh with --overwrite")
        if notes:
            notes.append(f"using the newest older checkpoint that verifies, {target}")
        elif note := fallback_note(self.directory, tag):
            notes.append(note)
        if found is None:
            notes.append(f"{target / COMPLETE} records no content hashes (an older mdist wrote it): only file sizes were checked")
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
        client.update(tag=tag, notes=notes)
        return client

    def _verify_contents(self, target: Path) -> list[str] | None:
        """The files of `target` whose bytes differ from their hashes in `COMPLETE`, as sentences (all
        ranks get all of them; each hashes its share); None when `COMPLETE` records no hashes."""
        marker = read_marker(target)
        hashes, sizes = marker.get(HASH), marker.get("files") or {}
        if not hashes:
            return None
        world = world_size()
        found = mismatches(target, share_of_files({name: sizes.get(name, 0) for name in hashes}, self.rank, world))
        return sorted(line for part in gather_objects(found) for line in part)

    def _verify(self, target: Path) -> None:
        """Every file `COMPLETE` lists is there with its size; the world size is the one that wrote it."""
        listed = read_marker(target).get("files", {})  # older markers hold only the step
        world = world_size()
        ranks = sum(1 for name in listed if re.fullmatch(r"rank\d+\.pt", name))
        if ranks and ranks != world:
            raise CheckpointError(f"{target} was written by {ranks} rank(s), this run has {world}: resume with {ranks}")
        problems = size_problems(target, listed, [*listed, f"rank{self.rank}.pt"])
        if problems:
            raise CheckpointError(f"{problems[0]}; {self._instead(target.name)}")

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
