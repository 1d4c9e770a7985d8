"""What hashing checkpoint files (sha256 into `COMPLETE`) adds to a save, at base-size students.

The state: one XLM-R-base-shaped student of 6 layers (250 002 × 768 embeddings, tied LM head) with
AdamW's two moments, fp32, as a one-rank ZeRO-2 engine writes it: the module in
`mp_rank_00_model_states.pt`, the fp32 partition and both moments in
`zero_pp_rank_0_mp_rank_00_optim_states.pt` (--students N for N such students). The engine is a
stand-in with DeepSpeed's own `TorchCheckpointEngine` (zip serialisation, as configured by
DeepSpeed), so `Checkpointer.save` takes the path a real run takes, without DeepSpeed's copies of
the tensors. Rows, each the median of --repeats saves into a fresh tag directory (files removed
and the page cache written back between saves, untimed), variants interleaved:

- no hashes: the engine's files, the rank file and a sizes-only `COMPLETE` (mdist before hashes);
- mdist: `Checkpointer.save` (sha256 of every byte as torch.save writes it, each tensor's bytes
  hashed on a second thread while written, gathered into `COMPLETE`);
- the same with hashing and writing one after the other on one thread;
- hash after writing: no hashes, then every file read back (page cache) and hashed, the
  alternative that reads the checkpoint twice.

Resident memory: the state (about 2.8 GB per student: the module is a view of the fp32 partition)
and the page cache of one save (with --dir /dev/shm, one save's files in memory: the CPU cost alone).

    python benchmarks/checkpoint_hashing.py [--students 1] [--repeats 3] [--dir /tmp] [--no-record]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import mdist.checkpoint_files
from mdist.checkpoint import Checkpointer, _atomic_write, rng_state
from mdist.checkpoint_files import COMPLETE, HASH, file_digest
from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

HIDDEN, FFN, VOCAB, POSITIONS, LAYERS = 768, 3072, 250_002, 514, 6
HEADER = ("date (UTC)", "device", "commit", "state", "variant", "save s", "added s", "added %", "written GB/s")


def student_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.embeddings.word_embeddings.weight": (VOCAB, HIDDEN), f"{prefix}.embeddings.position_embeddings.weight": (POSITIONS, HIDDEN),
              f"{prefix}.embeddings.token_type_embeddings.weight": (1, HIDDEN), f"{prefix}.embeddings.LayerNorm.weight": (HIDDEN,),
              f"{prefix}.embeddings.LayerNorm.bias": (HIDDEN,)}
    for i in range(LAYERS):
        layer = f"{prefix}.encoder.layer.{i}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes.update({f"{layer}.{name}.weight": (HIDDEN, HIDDEN), f"{layer}.{name}.bias": (HIDDEN,)})
        shapes.update({f"{layer}.intermediate.dense.weight": (FFN, HIDDEN), f"{layer}.intermediate.dense.bias": (FFN,),
                       f"{layer}.output.dense.weight": (HIDDEN, FFN), f"{layer}.output.dense.bias": (HIDDEN,)})
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({f"{layer}.{norm}.weight": (HIDDEN,), f"{layer}.{norm}.bias": (HIDDEN,)})
    shapes.update({f"{prefix}.lm_head.dense.weight": (HIDDEN, HIDDEN), f"{prefix}.lm_head.dense.bias": (HIDDEN,), f"{prefix}.lm_head.layer_norm.weight": (HIDDEN,),
                   f"{prefix}.lm_head.layer_norm.bias": (HIDDEN,), f"{prefix}.lm_head.bias": (VOCAB,)})
    return shapes


class StandInEngine:
    """`save_checkpoint` writing a one-rank ZeRO-2 layout through DeepSpeed's TorchCheckpointEngine."""

    def __init__(self, students: int):
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        self.checkpoint_engine = TorchCheckpointEngine()
        self.checkpoint_engine.zipfile_serialization = True  # DeepSpeed's configured default
        generator = torch.Generator().manual_seed(0)
        shapes = {name: shape for s in range(students) for name, shape in student_shapes(f"students.s{s}").items()}
        flat = torch.randn(sum(math.prod(shape) for shape in shapes.values()), generator=generator) * 0.02  # the fp32 partition
        self.module, offset = {}, 0  # views into it: the same bytes in the model file, without a second copy in memory
        for name, shape in shapes.items():
            self.module[name] = flat[offset:offset + math.prod(shape)].view(shape)
            offset += math.prod(shape)
        self.optim = {"optimizer_state_dict": {"state": {0: {"step": torch.tensor(1000.0), "exp_avg": torch.randn(flat.numel(), generator=generator) * 1e-3,
                                                             "exp_avg_sq": torch.rand(flat.numel(), generator=generator) * 1e-6}},
                                               "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "params": [0]}]},
                      "fp32_flat_groups": [flat], "ds_version": "0.19.8"}
        self.nbytes = 4 * flat.numel() * 4

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool = False) -> None:
        target = Path(save_dir) / tag
        target.mkdir(parents=True, exist_ok=True)
        self.checkpoint_engine.save({"module": self.module, **client_state}, str(target / "mp_rank_00_model_states.pt"))
        self.checkpoint_engine.save(self.optim, str(target / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))

    def _copy_recovery_script(self, save_path: str) -> None:
        """DeepSpeed copies its zero_to_fp32.py here (a few KiB); nothing to time."""


def save_without_hashes(engine: StandInEngine, directory: Path, step: int, client: dict, rank_state: dict) -> None:
    """mdist's save before hashes (one rank): the engine's files, the rank file, a sizes-only COMPLETE."""
    tag = f"step{step}"
    engine.save_checkpoint(str(directory), tag, {**client, "step": step})
    target = directory / tag
    torch.save({"rng": rng_state(), **rank_state}, target / "rank0.pt")
    files = {path.name: path.stat().st_size for path in sorted(target.iterdir()) if path.is_file()}
    _atomic_write(target / COMPLETE, json.dumps({"step": step, "files": files}, indent=1))
    _atomic_write(directory / "latest", tag)


def save_then_hash(engine: StandInEngine, directory: Path, step: int, client: dict, rank_state: dict) -> None:
    save_without_hashes(engine, directory, step, client, rank_state)
    target = directory / f"step{step}"
    marker = json.loads((target / COMPLETE).read_text())
    marker[HASH] = {name: file_digest(target / name) for name in marker["files"]}
    _atomic_write(target / COMPLETE, json.dumps(marker, indent=1))


def save_mdist(engine: StandInEngine, directory: Path, step: int, client: dict, rank_state: dict) -> None:
    Checkpointer(directory, 0).save(engine, step, client, rank_state)


def save_mdist_one_thread(engine: StandInEngine, directory: Path, step: int, client: dict, rank_state: dict) -> None:
    overlap, mdist.checkpoint_files._OVERLAP = mdist.checkpoint_files._OVERLAP, float("inf")
    try:
        Checkpointer(directory, 0).save(engine, step, client, rank_state)
    finally:
        mdist.checkpoint_files._OVERLAP = overlap


VARIANTS = {"no hashes": save_without_hashes, "mdist: sha256 beside the write (2nd thread)": save_mdist,
            "sha256 while writing, one thread": save_mdist_one_thread, "hash after writing (re-read)": save_then_hash}


def hash_rate(nbytes: int = 1 << 30) -> float:
    """sha256 GB/s over an in-memory buffer: the floor of what hashing can cost."""
    data = torch.empty(nbytes, dtype=torch.uint8).numpy()
    start = time.perf_counter()
    hashlib.sha256(memoryview(data)).hexdigest()
    return nbytes / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=1, help="XLM-R-base-shaped 6-layer students in the state (about 2.8 GB resident each)")
    parser.add_argument("--repeats", type=int, default=3, help="saves per variant (the median is reported)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the checkpoints are written (removed after each save)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = StandInEngine(args.students)
    gb = engine.nbytes / 1e9
    sha = hash_rate()
    print(f"state: {args.students} student(s), {gb:.2f} GB written per save; sha256 of an in-memory buffer: {sha:.2f} GB/s")
    client = {"scheduler": {"last_epoch": 1000}, "tokens": 123, "losses": {}, "mlflow_run_id": None}
    rank_state = {"data": {"cursor": 1000}}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    root = Path(tempfile.mkdtemp(prefix="mdist-ckpt-bench-", dir=args.dir))
    try:
        step = 0
        save_without_hashes(engine, root / "checkpoints", step, client, rank_state)  # warm-up, untimed
        shutil.rmtree(root / "checkpoints" / f"step{step}")
        for _ in range(args.repeats):
            for name, save in VARIANTS.items():
                step += 1
                os.sync()
                start = time.perf_counter()
                save(engine, root / "checkpoints", step, client, rank_state)
                times[name].append(time.perf_counter() - start)
                written = sum(p.stat().st_size for p in (root / "checkpoints" / f"step{step}").iterdir())
                shutil.rmtree(root / "checkpoints" / f"step{step}")
                print(f"  {name}: {times[name][-1]:.2f} s ({written / 1e9:.2f} GB)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    device, revision, stamp = device_name("cpu"), git_commit(), utc_stamp()
    base = statistics.median(times["no hashes"])
    state = f"{args.students} × XLM-R-base 6-layer + AdamW, {gb:.2f} GB"
    rows = []
    print(markdown_header(HEADER))
    for name, values in times.items():
        seconds = statistics.median(values)
        added = "" if name == "no hashes" else f"{seconds - base:+.2f}"
        percent = "" if name == "no hashes" else f"{100 * (seconds - base) / base:+.0f}"
        row = [stamp, device, revision, state, name, f"{seconds:.2f}", added, percent, f"{gb / seconds:.2f}"]
        print(markdown_row(row), flush=True)
        rows.append(row)
    if not args.no_record:
        title = (f"Checkpoint hashing (benchmarks/checkpoint_hashing.py), {stamp}, one rank, written to {args.dir}, median of {args.repeats} saves, "
                 f"page cache written back between saves; sha256 in memory {sha:.2f} GB/s")
        append_table(title, HEADER, rows)


if __name__ == "__main__":
    main()
