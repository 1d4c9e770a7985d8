"""Per-language batches streamed from `mdist prep` shards: split by rank and worker, exactly resumable.

Splitting (the node and worker splitters): the stream of (language, rank, worker) owns
shards[rank::world_size][worker::num_workers], so no two ranks or workers ever read the same shard.
Order: every epoch a stream reads its shards in a fresh seeded order (infinite; shards are resampled
each epoch) and shuffles documents within blocks of `shuffle_block` consecutive samples. Then, in the
worker: token ids (the pre-tokenised `ids.npy` when the manifest names the teacher's tokenizer, else
the text tokenised), packing with `Packer`, dynamic masking. Each item a worker yields is one step's
batch for every language (Algorithm 1) together with the worker's position after it.

Why a block shuffle instead of webdataset's reservoir `shuffle` and `resampled=True` stages: the
position of this stream is a few integers plus the packer's leftovers, so the checkpoint holds it and
a resumed run re-reads one block and continues exactly; a reservoir's contents and a resampler's RNG
live inside the worker process. DataLoader serves workers round-robin, so the main process knows which
worker made each item it hands out; on resume worker ids are rotated so the cycle goes on with the
worker whose turn it was.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mdist.data.batch import TokenBatch
from mdist.data.encoding import DocumentEncoder
from mdist.data.masking import MaskingSpec, mask_tokens
from mdist.data.packing import Packer
from mdist.errors import DataError
from mdist.manifests import manifest_path
from mdist.preemption import ignore_stop_signals


@dataclass(frozen=True)
class StreamConfig:
    """Everything a loader worker needs (pickled into each worker)."""

    shards: dict[str, tuple[str, ...]]
    pretokenised: dict[str, bool]
    encoder: DocumentEncoder
    masking: MaskingSpec
    seq_len: int
    batch_size: int
    seed: int
    rank: int
    world_size: int
    shuffle_block: int

    def own_shards(self, lang: str, worker: int, workers: int) -> tuple[str, ...]:
        return self.shards[lang][self.rank :: self.world_size][worker::workers]


class ShardBatchSource:
    """`next_batches() -> {lang: TokenBatch}` like TextBatchSource, from shards, with DataLoader workers.

    `state_dict()` is this rank's position (save it per rank); `load_state_dict` resumes it exactly.
    """

    def __init__(self, shards: dict[str, list[str | Path]], tokenizer, seq_len: int, batch_size: int, masking: MaskingSpec, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 2, shuffle_block: int = 1024,
                 pretokenised: dict[str, bool] | None = None, worker_timeout_s: float = 600.0):
        if seq_len < 3 or batch_size < 1 or shuffle_block < 1 or num_workers < 0 or not 0 <= rank < world_size:
            raise DataError(f"bad loader settings: seq_len={seq_len} batch_size={batch_size} shuffle_block={shuffle_block} num_workers={num_workers} rank={rank}/{world_size}")
        streams = world_size * max(num_workers, 1)
        for lang, paths in shards.items():
            if len(paths) < streams:
                raise DataError(f"language '{lang}': {len(paths)} shard(s) cannot feed {world_size} rank(s) × {max(num_workers, 1)} worker(s); "
                                f"re-run `mdist prep` with a smaller --shard-size-mb or use fewer data workers")
        self.config = StreamConfig(
            {lang: tuple(str(p) for p in paths) for lang, paths in shards.items()},
            pretokenised or {lang: False for lang in shards}, DocumentEncoder(tokenizer), masking,
            seq_len, batch_size, seed, rank, world_size, shuffle_block)
        self.num_workers = num_workers
        self.worker_timeout_s = worker_timeout_s
        self.step = 0
        self.worker_states: dict[int, dict] = {}
        self._items: Iterator | None = None

    @classmethod
    def from_dir(cls, shard_dir: str | Path, langs: list[str], tokenizer, **kwargs) -> "ShardBatchSource":
        """Shards listed by each language's manifest in `shard_dir`; pre-tokenised ids used when their tokenizer is ours."""
        fingerprint = DocumentEncoder(tokenizer).fingerprint
        shards, pretokenised = {}, {}
        for lang in langs:
            path = manifest_path(Path(shard_dir), lang)
            if not path.is_file():
                raise DataError(f"{path}: no manifest for language '{lang}'; run `mdist prep --lang {lang} --out {shard_dir} ...` first")
            manifest = read_manifest(path)
            shards[lang] = [path.parent / shard["name"] for shard in manifest["shards"]]
            pretokenised[lang] = manifest["tokenizer"] == fingerprint
            if manifest["tokenizer"] and not pretokenised[lang]:
                warnings.warn(f"{path}: pre-tokenised ids come from another tokenizer; tokenising the text instead")
        return cls(shards, tokenizer, pretokenised=pretokenised, **kwargs)

    def next_batches(self) -> dict[str, TokenBatch]:
        if self._items is None:
            rotation = self.step % max(self.num_workers, 1)
            dataset = _WorkerStreams(self.config, self.worker_states, rotation)
            # A generator of its own: creating the iterator draws a base seed, and from the global RNG that
            # draw would shift dropout after a resume (the iterator is created after the RNG is restored).
            loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=4 if self.num_workers else None,
                                generator=torch.Generator().manual_seed(self.config.seed), worker_init_fn=ignore_stop_signals,
                                timeout=self.worker_timeout_s if self.num_workers else 0)
            self._items = iter(loader)
        worker, state, batches = self._next_item()
        if isinstance(batches, DataError):  # a bad shard, named by the worker that met it
            raise batches
        self.worker_states[worker] = state
        self.step += 1
        return batches

    def _next_item(self) -> tuple:
        """The loader's next item; a worker that hands none within `worker_timeout_s` stops the run, named.
        DataLoader serves workers round-robin, so the one whose turn it is works for step `step`."""
        try:
            return next(self._items)
        except RuntimeError as err:
            if not str(err).startswith("DataLoader timed out"):
                raise
            c, worker = self.config, self.step % max(self.num_workers, 1)
            shards = "; ".join(f"{lang}: {_names(c.own_shards(lang, worker, self.num_workers))}" for lang in c.shards)
            raise DataError(f"rank {c.rank}: data loader worker {worker} handed no batch within {self.worker_timeout_s:g} s "
                            f"(data.worker_timeout_s); its shards: {shards}") from None

    def state_dict(self) -> dict:
        c = self.config
        return {"step": self.step, "seed": c.seed, "rank": c.rank, "world_size": c.world_size, "num_workers": self.num_workers,
                "workers": {str(w): state for w, state in self.worker_states.items()}}

    def load_state_dict(self, state: dict) -> None:
        c = self.config
        saved = (state["seed"], state["rank"], state["world_size"], state["num_workers"])
        if saved != (c.seed, c.rank, c.world_size, self.num_workers):
            raise DataError(f"data position was saved with seed, rank, world size, workers = {saved}; "
                            f"this run has {(c.seed, c.rank, c.world_size, self.num_workers)} — resume with the same ones")
        self.close()
        self.step = state["step"]
        self.worker_states = {int(w): s for w, s in state["workers"].items()}

    def close(self) -> None:
        """Stop the worker processes now (they restart on the next `next_batches`). Not left to garbage
        collection: workers ignore SIGTERM, so one still alive at interpreter exit would block it; one
        that does not stop (stuck reading a shard) is killed."""
        if self._items is not None and hasattr(self._items, "_shutdown_workers"):
            workers = list(self._items._workers)
            self._items._shutdown_workers()  # what the iterator's __del__ does, done deterministically
            for process in workers:
                if process.is_alive():
                    process.kill()
                    process.join()
        self._items = None


class _WorkerStreams(IterableDataset):
    """One worker's items: (logical worker id, its state after the item, {lang: TokenBatch})."""

    def __init__(self, config: StreamConfig, states: dict[int, dict], rotation: int):
        self.config, self.states, self.rotation = config, states, rotation

    def __iter__(self):
        info = get_worker_info()
        workers, physical = (info.num_workers, info.id) if info else (1, 0)
        worker = (physical + self.rotation) % workers
        state = self.states.get(worker, {"item": 0, "langs": {}})
        try:
            yield from self._items(worker, workers, state)
        except DataError as err:  # handed to the trainer as an item: raised in a worker, it would arrive wrapped in the worker's traceback
            yield worker, None, err

    def _items(self, worker: int, workers: int, state: dict):
        c = self.config
        streams = {lang: _LanguageStream(c, lang, index, worker, workers, state["langs"].get(lang)) for index, lang in enumerate(c.shards)}
        item = state["item"]
        while True:
            batches = {}
            for index, (lang, stream) in enumerate(streams.items()):
                ids_BL = torch.tensor(stream.rows(c.batch_size), dtype=torch.long)
                masked_BL, labels_BL = mask_tokens(ids_BL, c.masking, _torch_generator(c.seed, c.rank, worker, item, index))
                batches[lang] = TokenBatch(lang, masked_BL, (ids_BL != c.encoder.tokenizer.pad_token_id).long(), labels_BL)
            item += 1
            yield worker, {"item": item, "langs": {lang: stream.state() for lang, stream in streams.items()}}, batches


class _LanguageStream:
    """Packed rows of one language for one (rank, worker); `state()` is its exact position.

    Position: the current block starts at sample `sample` of shard `shard` in epoch `epoch`'s order;
    `used` of its documents are packed; `buffer` and `pending` are the packer's leftovers.
    """

    def __init__(self, config: StreamConfig, lang: str, lang_index: int, worker: int, workers: int, state: dict | None):
        tok = config.encoder.tokenizer
        self.config, self.lang = config, lang
        self.shards = config.own_shards(lang, worker, workers)
        self.where = f"language '{lang}', rank {config.rank}, worker {worker}: shard(s) {_names(self.shards)}"
        self.empty_since: int | None = None  # the epoch of the first of the latest run of empty documents
        self.keys = (config.seed, lang_index, config.rank, worker)
        state = state or {"epoch": 0, "shard": 0, "sample": 0, "block": 0, "used": 0, "buffer": [], "pending": []}
        self.epoch, self.shard, self.sample = state["epoch"], state["shard"], state["sample"]
        self.block, self.used, self.pending = state["block"], state["used"], list(state["pending"])
        self.packer = Packer(config.seq_len, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, list(state["buffer"]))
        self._samples = self._read(self.epoch, self.shard, self.sample)
        self._docs, self._end = self._read_block()

    def rows(self, n: int) -> list[list[int]]:
        while len(self.pending) < n:
            self.pending.extend(self.packer.add(self._next_document()))
        rows, self.pending = self.pending[:n], self.pending[n:]
        return rows

    def state(self) -> dict:
        return {"epoch": self.epoch, "shard": self.shard, "sample": self.sample, "block": self.block, "used": self.used,
                "buffer": list(self.packer.buffer), "pending": list(self.pending)}

    def _next_document(self) -> list[int]:
        """The next document with at least one token. A stream whose documents stay empty for a whole
        epoch (two epoch changes) would never fill a row: it stops, naming its shards."""
        while True:
            if self.used == len(self._docs):
                (self.epoch, self.shard, self.sample), self.block, self.used = self._end, self.block + 1, 0
                self._docs, self._end = self._read_block()
            self.used += 1
            if self._docs[self.used - 1]:
                self.empty_since = None
                return self._docs[self.used - 1]
            self.empty_since = self.epoch if self.empty_since is None else self.empty_since
            if self.epoch >= self.empty_since + 2:
                raise DataError(f"{self.where} hold no text or ids to train on (every document is empty); re-create them with `mdist prep`")

    def _read_block(self) -> tuple[list[list[int]], tuple[int, int, int]]:
        """The current block's documents in shuffled order, and the position after the block.

        A block ends early at the end of an epoch, so every epoch yields each document exactly once.
        """
        samples = []
        for sample, end in self._samples:
            samples.append(sample)
            if len(samples) == self.config.shuffle_block or end[1:] == (0, 0):
                break
        try:
            if self.config.pretokenised[self.lang]:
                docs = [_npy_ids(sample["ids.npy"]) for sample in samples]
            else:
                docs = self.config.encoder([sample["txt"].decode("utf-8") for sample in samples])
        except (KeyError, UnicodeDecodeError, ValueError) as err:
            where = next((sample.get("__url__") for sample in samples), "a shard")
            raise DataError(f"{where}: a sample without readable text or ids ({type(err).__name__}: {err}); re-create the shard with `mdist prep`") from None
        order = np.random.default_rng([*self.keys, 1, self.block]).permutation(len(docs))
        return [docs[i] for i in order], end

    def _read(self, epoch: int, shard: int, sample: int) -> Iterator[tuple[dict, tuple[int, int, int]]]:
        """Samples from a position on, forever, each with the position after it; after an epoch's last one
        that is the start of the next epoch."""
        while True:
            order = np.random.default_rng([*self.keys, 0, epoch]).permutation(len(self.shards))
            previous, whole_epoch = None, (shard, sample) == (0, 0)
            for index in range(shard, len(order)):
                url = self.shards[order[index]]
                samples = iter(islice(wds.tarfile_to_samples()([{"url": url}]), sample, None))
                sample_no = sample
                while True:
                    try:
                        found = next(samples, None)
                    except Exception as err:  # tarfile and webdataset raise many types for a broken tar
                        raise DataError(f"{url}: unreadable shard after {sample_no} sample(s) ({type(err).__name__}: {err.args[0] if err.args else err}); "
                                        "re-create it with `mdist prep` (the run stops rather than skip data silently)") from None
                    if found is None:
                        break
                    sample_no += 1
                    if previous is not None:
                        yield previous
                    previous = found, (epoch, index, sample_no)
                sample = 0
            if previous is None and whole_epoch:  # every shard read to its end, not one sample: reading on would never yield
                raise DataError(f"{self.where} hold no sample; re-create them with `mdist prep`")
            epoch, shard = epoch + 1, 0
            if previous is not None:
                yield previous[0], (epoch, 0, 0)


def read_manifest(path: Path) -> dict:
    """A language's manifest, checked: JSON with its shards, each present with the size prep wrote."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        shards = [_manifest_entry(shard) for shard in manifest["shards"]]
        if not isinstance(manifest["tokenizer"], (str, type(None))):  # null when the shards hold text only
            raise TypeError("tokenizer")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a JSON manifest ({err}); re-run `mdist prep`") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: not a manifest written by `mdist prep` (it needs 'tokenizer' and 'shards' with name and bytes: "
                        "a file name beside the manifest and its size); re-run `mdist prep`") from None
    if not shards:
        raise DataError(f"{path}: lists no shards; re-run `mdist prep` with input documents")
    for name, size in shards:
        shard = path.parent / name
        if not shard.is_file():
            raise DataError(f"{shard}: listed in {path.name} but missing; re-run `mdist prep`")
        if shard.stat().st_size != size:
            raise DataError(f"{shard}: {shard.stat().st_size} bytes, prep wrote {size} (truncated or replaced); re-run `mdist prep`")
    return manifest


def _manifest_entry(shard: dict) -> tuple[str, int]:
    """One shard of a manifest: (name, bytes), a plain file name beside the manifest and a size; TypeError otherwise."""
    name, size = shard["name"], shard["bytes"]
    if not (isinstance(name, str) and Path(name).name == name and name != ".." and type(size) is int and size >= 0):
        raise TypeError(name)
    return name, size


def _names(paths: tuple[str, ...], shown: int = 3) -> str:
    """The first few of `paths`, and how many more."""
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _npy_ids(data: bytes) -> list[int]:
    """The ids of an `ids.npy` member as written by prep (npy 1.0, 1-D little-endian int32); np.load's header parsing costs more than the read."""
    if data[:8] != b"\x93NUMPY\x01\x00":
        return np.load(io.BytesIO(data)).tolist()
    return np.frombuffer(data, "<i4", offset=10 + int.from_bytes(data[8:10], "little")).tolist()


def _torch_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from integer keys, the same in every process."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0] >> 1))
