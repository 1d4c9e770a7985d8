"""Run by test_multirank under torchrun (2 CPU ranks): an XL-width teacher's ZeRO-3 sharded forward
against the same weights loaded whole.

Each rank builds the teacher partitioned (`load_partitioned_teacher`, its half of every tensor), runs
it in its ZeRO-3 inference engine on one fixed batch (some padding, masked positions), loads the same
directory whole with `load_teacher` (Hugging Face's own loading, no DeepSpeed) and runs that too. Rank 0
writes the largest difference of every output (hidden states, Q/K, MLM-head rows, decoder), each
output's scale, and its share of the teacher's elements. Then the same in bf16 (`teacher.dtype: bf16`):
partitions built in bf16 against the whole model cast to bf16.
Usage: torchrun --nproc_per_node 2 tests/zero3_xl_forward.py TEACHER_DIR OUT.json
"""
import json
import sys
from pathlib import Path

import torch

from mdist.data.batch import TokenBatch
from mdist.engine import init_distributed, load_partitioned_teacher, shutdown_distributed, teacher_engine
from mdist.teacher import load_teacher
from mdist.train import teacher_outputs


def flat(out) -> dict[str, torch.Tensor]:
    tensors = {f"hidden{k}": h for k, h in enumerate(out.hidden_states)}
    tensors.update({f"{name}{k}": t for k, qk in enumerate(out.qk) for name, t in zip(("q", "k"), qk)})
    tensors.update(head=out.head_hidden_ND, decoder=out.decoder_weight_VD, bias=out.decoder_bias_V)
    return tensors


def main(teacher_dir: Path, out: Path) -> None:
    rank, world = init_distributed()
    teacher, _ = load_partitioned_teacher(teacher_dir, world, 0)
    params = list({id(p): p for p in teacher.parameters()}.values())
    share = sum(p.ds_tensor.numel() for p in params) / sum(p.ds_numel for p in params)
    engine = teacher_engine(teacher, world, 0)
    vocab = teacher.config.vocab_size
    ids = torch.randint(5, vocab - 1, (2, 24), generator=torch.Generator().manual_seed(0))  # the same batch on both ranks
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # padding: the attention mask reaches the sharded layers
    ids[1, 17:] = teacher.config.pad_token_id
    labels = torch.full_like(ids, -100)
    labels[:, 3::5] = ids[:, 3::5]
    labels[1, 17:] = -100
    batch = {"en": TokenBatch("en", ids, mask, labels)}
    sharded = flat(teacher_outputs(engine.module, batch)["en"])
    whole_model, _ = load_teacher(teacher_dir)
    whole = flat(teacher_outputs(whole_model, batch)["en"])
    result = {"model_type": teacher.config.model_type, "hidden": teacher.config.hidden_size, "share": share,
              "diff": {k: (sharded[k].float() - whole[k].float()).abs().max().item() for k in whole},
              "scale": {k: whole[k].float().abs().max().item() for k in whole},
              "shapes_equal": all(sharded[k].shape == whole[k].shape for k in whole)}  # now: `whole` holds the weights' own tensors
    del engine
    teacher16, _ = load_partitioned_teacher(teacher_dir, world, 0, bf16=True)
    dtypes16 = sorted({str(p.ds_tensor.dtype) for p in teacher16.parameters()})
    engine16 = teacher_engine(teacher16, world, 0, bf16=True)
    sharded16 = flat(teacher_outputs(engine16.module, batch)["en"])
    whole16 = flat(teacher_outputs(whole_model.to(torch.bfloat16), batch)["en"])
    if rank == 0:
        result["bf16"] = {"partition_dtypes": dtypes16, "output_dtypes": sorted({str(t.dtype) for t in sharded16.values()}),
                          "diff": {k: (sharded16[k].float() - whole16[k].float()).abs().max().item() for k in whole16},
                          "scale": {k: whole16[k].float().abs().max().item() for k in whole16}}
        out.write_text(json.dumps(result))
    del engine16
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
