"""Run by test_multirank under torchrun (2 CPU ranks): how much of a ZeRO-3 teacher one rank ever holds.

Loads the teacher partitioned (`load_partitioned_teacher`), builds the students from it (tensor by
tensor) and runs it in its ZeRO-3 engine, sampling the full tensors this rank holds on entering every
`GatheredParameters` block and before every module's forward (DeepSpeed's own pre-forward hooks,
registered first, have gathered that module's parameters by then). Rank 0 writes, in elements:
the whole teacher, this rank's shard, and the most it held gathered at once.
Usage: torchrun --nproc_per_node 2 tests/zero3_teacher_peak.py TEACHER_DIR OUT.json
"""
import json
import sys
from pathlib import Path

import deepspeed
import torch

from mdist.config import load_run_config
from mdist.data.batch import TokenBatch
from mdist.engine import init_distributed, load_partitioned_teacher, shutdown_distributed, teacher_engine
from mdist.students import StudentGroup
from mdist.train import teacher_outputs


def main(teacher_dir: Path, out: Path) -> None:
    rank, world = init_distributed()
    params: list[torch.nn.Parameter] = []
    peak = [0]

    def sample(*_):
        peak[0] = max(peak[0], sum(p.data.numel() for p in params))  # a partitioned tensor's data is empty

    class Recording(deepspeed.zero.GatheredParameters):
        def __enter__(self):  # while loading, the teacher is known only to the block: count its tensors too
            entered = super().__enter__()
            peak[0] = max(peak[0], sum(p.data.numel() for p in (getattr(self, "params", None) or [])))
            sample()
            return entered

    deepspeed.zero.GatheredParameters = Recording  # mdist looks it up at call time
    teacher, _ = load_partitioned_teacher(teacher_dir, world, 0)
    params += list({id(p): p for p in teacher.parameters()}.values())
    cfg = load_run_config("tiny", [f"teacher.path={teacher_dir}"])
    StudentGroup(teacher, cfg.students, teacher.config.hidden_size)  # initialised from the teacher
    engine = teacher_engine(teacher, world, 0)
    for module in engine.module.modules():
        module.register_forward_pre_hook(sample)
    ids = torch.randint(5, teacher.config.vocab_size - 1, (2, 16), generator=torch.Generator().manual_seed(rank))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    teacher_outputs(engine.module, {"en": TokenBatch("en", ids, torch.ones_like(ids), labels)})
    if rank == 0:
        out.write_text(json.dumps({"whole": sum(p.ds_numel for p in params), "shard": sum(p.ds_tensor.numel() for p in params),
                                   "largest": max(p.ds_numel for p in params), "peak_gathered": peak[0]}))
    del engine
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
