"""Per-rank memory of an mdist run, checked against real DeepSpeed engines on 2 CPU ranks.

    python benchmarks/memory_model.py            # students-per-GPU table for the XLM-R base recipe on
                                                 # 80 GB GPUs + a check against measured 2-rank CPU runs
    python benchmarks/memory_model.py --no-measure

The model is mdist.memory (the one `mdist plan` and `mdist distill` use; its docstring has the formulas).
Measured per rank: the storage of every tensor of each state category after two steps, and what autograd
saves for one student's backward (saved-tensor hooks around its forward and loss) against the model's
activations + loss terms + logits at that micro-batch.
The measured check runs the `tiny` recipe (scaled up a little) on 2 CPU ranks over gloo at each
stage, sums the storage of every tensor in each category on each rank after two steps, and
prints model vs measured.

The step's peak (every part together, transients included) is measured separately: `mdist distill`'s own
`run_distillation` on 2 CPU ranks with a teacher whose vocabulary (STEP_PEAK_VOCAB) makes the tied
embedding/decoder matrix the largest tensor, as it is at real size; the second step runs under the
profiler, whose allocation timeline gives the step's peak above the tensors alive when it starts (counted
from the garbage collector's list, ZeRO-3 shards and gradients included), against the plan's total.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


# ------------------------------------------------------------------------------------------ measuring


def _storage_bytes(tensors, seen: set) -> int:
    total = 0
    for t in tensors:
        if t is None or not hasattr(t, "untyped_storage"):
            continue
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def held(p) -> list:
    """What this rank holds of a parameter: its ZeRO-3 shard, plus the full tensor if gathered."""
    parts = [p.ds_tensor] if hasattr(p, "ds_tensor") else []
    if not hasattr(p, "ds_tensor") or p.numel() > 0:
        parts.append(p.data)
    return parts


def live_state_bytes(teacher, group, engine, optimizer) -> dict[str, int]:
    """Storage bytes this rank holds now of the teacher, the students' parameters, their gradients (and
    DeepSpeed's gradient buffers) and the optimiser states (and ZeRO's fp32 partitions); each storage once."""
    import torch

    seen: set = set()
    measured = {"teacher": _storage_bytes([t for p in teacher.parameters() for t in held(p)], seen)}
    params = list({id(p): p for p in group.parameters()}.values())
    measured["params"] = _storage_bytes([t for p in params for t in held(p)], seen)
    zero = engine.optimizer
    grads = [p.grad for p in params]
    for name in ("averaged_gradients", "fp32_partitioned_groups_flat_grad_buffer", "grad_partitions_flat_buffer"):
        value = getattr(zero, name, None)
        if isinstance(value, dict):
            grads += [t for v in value.values() for t in (v if isinstance(v, list) else [v])]
        elif isinstance(value, torch.Tensor):
            grads.append(value)
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        grads += [getattr(t, "grad", None) for t in getattr(zero, name, []) or []]
    for name in ("ipg_buffer", "grads_in_partition", "__param_id_to_grad_partition"):
        value = getattr(zero, name, None)
        grads += value if isinstance(value, list) else ([value] if isinstance(value, torch.Tensor) else [])
    measured["grads"] = _storage_bytes(grads, seen)
    states = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim() > 0]
    masters = [t for g in optimizer.param_groups for t in g["params"]]  # stage 0: the params (already counted)
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):  # ZeRO's fp32 partitions
        masters += list(getattr(zero, name, []) or [])
    measured["optimizer"] = _storage_bytes(states + masters, seen)
    measured["total"] = sum(measured.values())
    return measured


def measure_rank(stage: int, teacher_zero3: bool, out_dir: Path) -> dict:
    """Run inside torchrun: build exactly what `mdist distill` builds, take two steps, count bytes."""
    import torch

    from mdist.config import load_run_config
    from mdist.data.masking import MaskingSpec
    from mdist.data.text import TextBatchSource
    from mdist.engine import init_distributed, load_partitioned_teacher, shutdown_distributed, student_engine, teacher_engine
    from mdist.losses import DistillLoss
    from mdist.optim import build_optimizer, student_param_groups
    from mdist.run import training_documents
    from mdist.students import StudentGroup
    from mdist.teacher import build_tiny_teacher, load_teacher
    from mdist.train import distill_step

    overrides = [f"deepspeed.zero_stage={stage}", "deepspeed.persistence_threshold=0", "students.layers=2",
                 "teacher.tiny.hidden=64", "teacher.tiny.ffn=256", "teacher.tiny.vocab=400", "train.batch_size=2"]
    cfg = load_run_config("tiny", overrides)
    rank, world = init_distributed()
    docs = training_documents(cfg)
    tdir = out_dir / "teacher"
    if rank == 0 and not (tdir / "config.json").is_file():
        build_tiny_teacher(cfg.teacher, (d for ds in docs.values() for d in ds), tdir, 0)
    torch.distributed.barrier()
    teacher, tok = load_partitioned_teacher(tdir, world, 0) if teacher_zero3 else load_teacher(tdir)
    group = StudentGroup(teacher, cfg.students, teacher.config.hidden_size)  # as `mdist distill`: teacher tensors gathered one by one
    keep = teacher_engine(teacher, world, 0) if teacher_zero3 else None
    optimizer = build_optimizer("adamw", student_param_groups(dict(group.students), group.projections, 0.01), 1e-3)
    engine = student_engine(group, optimizer, cfg, world)
    source = TextBatchSource.from_documents(docs, tok, cfg.train.seq_len, batch_size=2, masking=MaskingSpec.from_tokenizer(tok, teacher.config.vocab_size, 0.15), seed=0, rank=rank, world_size=world)
    loss_fn = DistillLoss.build(cfg.strategy, None, None, 1.0, cfg.students.layers, teacher.config.num_hidden_layers)
    for step in range(2):
        distill_step(engine, optimizer, teacher, loss_fn, source.next_batches(), "sequential", step)
    # Peak state inside a step: forward (ZeRO-3 gathers the students' external head params) and
    # backward done, gradients reduced and held, optimiser step not yet taken.
    from mdist.optim import set_active_students
    from mdist.train import teacher_outputs

    lang, batch = next(iter(source.next_batches().items()))
    student = group.student_for(lang)[0]
    set_active_students(optimizer, [student])
    target = teacher_outputs(teacher, {lang: batch})[lang]
    storages: dict[int, int] = {}

    def pack(t):  # what autograd keeps for the backward: the student's activations and the loss's, not its weights
        if not isinstance(t, torch.nn.Parameter):  # (ZeRO-3 saves the parameter, whose gathered data it frees after use)
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = engine(student, batch.input_ids_BL, batch.attention_mask_BL, batch.labels_BL)
        loss, _ = loss_fn(out, target, batch.attention_mask_BL, batch.labels_BL)
    engine.backward(loss)

    measured = live_state_bytes(teacher, group, engine, optimizer)
    weights = {t.untyped_storage().data_ptr() for p in list(group.parameters()) + list(teacher.parameters()) for t in held(p)}
    saved = sum(n for ptr, n in storages.items() if ptr not in weights)
    from mdist.memory import LOGIT_BYTES_TORCH, Layout, loss_terms, shape_from_config, states, student_activations
    from mdist.plan import workload

    work = workload(cfg, shape_from_config(teacher.config.to_dict()))
    model = states(work, Layout(stage, teacher_zero3, False, 2, 1), world, gpu=False)
    whole_teacher = sum(getattr(p, "ds_numel", p.numel()) for p in teacher.parameters()) * 4  # fp32 bytes of all of it
    result = {"rank": rank, "world": world, "stage": stage, "teacher_zero3": teacher_zero3, "measured": measured, "whole_teacher_bytes": whole_teacher,
              "model": {**model, "total": sum(model.values())},
              # one student's saved forward at this micro-batch: activations, loss terms, the vocabulary logits (PyTorch ops)
              "saved": {"measured": saved, "model": student_activations(work, 2, gpu=False) + loss_terms(work, 2) + len(batch.masked_N) * LOGIT_BYTES_TORCH * work.teacher.vocab}}
    del keep
    shutdown_distributed()
    return result


def on_two_ranks(args: list[str], timeout: float = 300, check: bool = True, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 ARGS` on CPU ranks (gloo), one thread each, with `env_extra` set; `check`: raise with
    its stderr on failure."""
    from mdist.engine import free_port, without_launcher_variables

    env = without_launcher_variables(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu")
    env.update(env_extra or {})
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return done


STEP_PEAK_VOCAB, STEP_PEAK_TEACHER_HIDDEN = 50_000, 128


def step_peak_teacher(out_dir: Path) -> Path:
    """A 4-layer, 128-wide XLM-R teacher with a STEP_PEAK_VOCAB-entry vocabulary (tokenizer padded to it)."""
    from real_size import write_tokenizer
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out_dir, STEP_PEAK_VOCAB)
    d = STEP_PEAK_TEACHER_HIDDEN
    config = XLMRobertaConfig(vocab_size=STEP_PEAK_VOCAB, hidden_size=d, num_hidden_layers=4, num_attention_heads=4, intermediate_size=4 * d,
                              max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    XLMRobertaForMaskedLM(config).save_pretrained(str(out_dir))
    return out_dir


def live_tensor_bytes() -> int:
    """Storage of every tensor alive now (the garbage collector's list; ZeRO-3 shards and gradients too), each storage once."""
    import gc

    import torch

    seen: set = set()
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return _storage_bytes([t for o in tensors for t in (o, getattr(o, "ds_tensor", None), o.grad)], seen)


def allocation_peak(prof) -> tuple[int, list[tuple[int, str]]]:
    """The peak of CPU bytes allocated and not yet freed since the profiler started, and the largest
    allocations alive at it (bytes, the op that made each)."""
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.ptr, event.parent.name if event.parent else "-"))
    live = peak = 0
    alive: dict[int, tuple[int, str]] = {}
    at_peak: list = []
    for _, size, ptr, op in sorted(events):
        live += size
        if size > 0:
            alive[ptr] = (size, op)
        else:
            alive.pop(ptr, None)
        if live > peak:
            peak, at_peak = live, sorted(alive.values(), reverse=True)[:4]
    return peak, at_peak


def step_peak_overrides(teacher_dir: Path, stage: int, width: int) -> list[str]:
    return [f"teacher.path={teacher_dir}", f"teacher.zero3={str(stage == 3).lower()}", f"deepspeed.zero_stage={stage}", "loss.kernels=torch",
            "students.groups={en: [en]}", "students.layers=3", f"students.hidden={width}", "students.init=random", "data.kind=synthetic",
            "train.batch_size=1", "train.grad_accum=1", "train.seq_len=128", "train.steps=2", "train.warmup_steps=0", "train.save_every=0",
            "tracking.enabled=false"]


def measure_step_peak_rank(teacher_dir: Path, stage: int, width: int, out_dir: Path, result: Path) -> None:
    """Inside torchrun: `run_distillation` with its second `distill_step` profiled; rank 0 writes the peak and the plan."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import mdist.run
    from mdist.config import load_run_config
    from mdist.memory import shape_from_config
    from mdist.plan import plan

    step, measured = mdist.run.distill_step, {}

    def profiled(*args, **kwargs):
        if measured.get("steps", 0) != 1:
            measured["steps"] = measured.get("steps", 0) + 1
            return step(*args, **kwargs)
        measured["steps"] = 2
        measured["before"] = live_tensor_bytes()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = step(*args, **kwargs)
        measured["peak_above"], measured["at_peak"] = allocation_peak(prof)
        return out

    load = mdist.run.load_partitioned_teacher

    def profiled_load(*args, **kwargs):  # a ZeRO-3 teacher's building peak
        measured["before_building"] = live_tensor_bytes()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = load(*args, **kwargs)
        measured["building_above"], measured["building_at_peak"] = allocation_peak(prof)
        return out

    mdist.run.distill_step = profiled
    mdist.run.load_partitioned_teacher = profiled_load
    cfg = load_run_config("tiny", step_peak_overrides(teacher_dir, stage, width))
    mdist.run.run_distillation(cfg, out_dir)
    if os.environ.get("RANK", "0") != "0":
        return
    teacher = shape_from_config(json.loads((teacher_dir / "config.json").read_text(encoding="utf-8")))
    parts = plan(cfg, teacher, 2, 64, gpu=False).configured_bytes
    result.write_text(json.dumps({"stage": stage, "width": width, "measured": measured["before"] + measured["peak_above"], **measured, "plan": parts}))


def measure_step_peaks(configs: list[tuple[int, int]], work: Path) -> list[dict]:
    """(stage, student width) → rank 0's measured step peak and plan (step_peak_teacher built in `work` once)."""
    teacher_dir = step_peak_teacher(work / "step-peak-teacher")
    rows = []
    for stage, width in configs:
        result = work / f"peak-{stage}-{width}.json"
        on_two_ranks([__file__, "--step-peak", str(teacher_dir), str(stage), str(width), str(work / f"run-{stage}-{width}"), str(result)])
        rows.append(json.loads(result.read_text()))
    return rows


def run_measurements(configs: list[tuple[int, bool]]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage, tz3 in configs:
            result = Path(tmp) / f"r{stage}{int(tz3)}.json"
            on_two_ranks([__file__, "--rank-measure", str(stage), str(int(tz3)), tmp, str(result)])
            rows.append(json.loads(result.read_text()))
    return rows


def fit_table(gpu_gib: float = 80.0, world_sizes=(1, 8)) -> list[list]:
    """How many 6-layer students of the XLM-R base recipe fit per layout (mdist.plan.most_students: states,
    activations at its 16 × 512 micro-batch, logits and buffers)."""
    from mdist.config import load_run_config
    from mdist.memory import Layout
    from mdist.plan import most_students, teacher_of

    cfg = load_run_config("xlmr-base-monoshot", check_paths=False)
    rows = []
    for world in world_sizes:
        for stage, tz3, offload in ((0, False, False), (2, False, False), (3, True, False), (3, True, True)):
            layout = Layout(stage, tz3, offload, cfg.train.batch_size, cfg.train.grad_accum)
            rows.append([world, stage, "ZeRO-3" if tz3 else "replicated", "yes" if offload else "no", most_students(cfg, teacher_of(cfg), world, gpu_gib, layout)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-measure", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--rank-measure", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--step-peak", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_peak:
        teacher_dir, stage, width, out_dir, result = args.step_peak
        measure_step_peak_rank(Path(teacher_dir), int(stage), int(width), Path(out_dir), Path(result))
        return
    if args.rank_measure:
        stage, tz3, tmp, result = args.rank_measure
        res = measure_rank(int(stage), bool(int(tz3)), Path(tmp))
        if res["rank"] == 0:
            Path(result).write_text(json.dumps(res))
        return

    from recording import append_table, device_name, git_commit, markdown_header, markdown_row, utc_stamp

    from mdist.memory import KEPT

    commit, stamp = git_commit(), utc_stamp()
    header = ["ranks", "student ZeRO", "teacher", "optimizer offload", "6-layer students in 80 GB"]
    fit = fit_table()
    print("XLM-R base recipe (mdist.memory; bf16 + fp32 Adam; activations at 16 × 512, logits, buffers), per rank:")
    print(markdown_header(header))
    for row in fit:
        print(markdown_row(row))
    if not args.no_record:
        append_table(f"Memory model (benchmarks/memory_model.py, mdist.memory), {stamp}, {commit}: XLM-R base recipe, 6-layer students, 80 GB GPUs (model, not measured)", header, fit)
    if args.no_measure:
        return
    rows = run_measurements([(0, False), (1, False), (2, False), (3, False), (3, True)])
    mheader = ["date (UTC)", "device", "commit", "ranks", "student ZeRO", "teacher ZeRO-3", "category", "model bytes/rank", "measured bytes/rank", "measured/model"]
    table = []
    for r in rows:
        for cat in ("teacher", "params", "grads", "optimizer", "total"):
            model, meas = r["model"][cat], r["measured"][cat]
            table.append([stamp, device_name("cpu"), commit, r["world"], r["stage"], "yes" if r["teacher_zero3"] else "no", cat, f"{model:,.0f}", f"{meas:,.0f}", f"{meas / model:.3f}" if model else "-"])
        model, meas = r["saved"]["model"], r["saved"]["measured"]
        table.append([stamp, device_name("cpu"), commit, r["world"], r["stage"], "yes" if r["teacher_zero3"] else "no", "saved for backward (activations, loss terms, logits)", f"{model:,.0f}", f"{meas:,.0f}", f"{meas / model:.3f}"])
    show(f"Memory model vs measured 2-rank CPU runs (benchmarks/memory_model.py), {stamp}", mheader, table, not args.no_record)
    with tempfile.TemporaryDirectory() as tmp:
        peaks = measure_step_peaks([(stage, width) for stage in (0, 1, 2, 3) for width in (128, 256)], Path(tmp))
    pheader = ["date (UTC)", "device", "commit", "ranks", "student ZeRO", "students", "kept (plan)", "step peak (plan)", "kept + step peak (plan)",
               "alive at step start", "step's allocation peak above it", "measured peak", "measured/plan", "largest allocations at the peak",
               "ZeRO-3 teacher's building: plan, measured, measured/plan"]
    ptable = []
    for r in peaks:
        kept = sum(r["plan"][part] for part in KEPT)
        steps = kept + r["plan"]["step peak"]
        at_peak = ", ".join(f"{size / 1e6:.1f} MB {op}" for size, op in r["at_peak"])
        building = r["before_building"] + r["building_above"] if "building_above" in r else None
        build = f"{r['plan']['building']:,.0f}, {building:,.0f}, {building / r['plan']['building']:.3f}" if building else "-"
        ptable.append([stamp, device_name("cpu"), commit, 2, r["stage"], f"1 × 3 layers × {r['width']}, vocabulary {STEP_PEAK_VOCAB:,}", f"{kept:,.0f}",
                       f"{r['plan']['step peak']:,.0f}", f"{steps:,.0f}", f"{r['before']:,.0f}", f"{r['peak_above']:,.0f}",
                       f"{r['measured']:,.0f}", f"{r['measured'] / steps:.3f}", at_peak, build])
    show(f"Step peak vs the plan, 2 CPU ranks (benchmarks/memory_model.py, profiler allocation timeline), {stamp}", pheader, ptable, not args.no_record)


def show(title: str, header: list[str], table: list[list], record: bool) -> None:
    """Print a measured table; append it to RESULTS.md unless --no-record."""
    from recording import append_table, markdown_header, markdown_row

    print()
    print(markdown_header(header))
    for row in table:
        print(markdown_row(row))
    if record:
        append_table(title, header, table)


if __name__ == "__main__":
    main()
