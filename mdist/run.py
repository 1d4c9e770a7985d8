"""`mdist distill`: build teacher, students, data, loss and engine from a RunConfig, run Algorithm 1,
checkpoint, export, summarise. Thin on purpose: each piece lives in its own module.
"""
from __future__ import annotations

import json
import random
import resource
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mdist.config import TINY_RANDOM, RunConfig, TrainConfig, check_against_teacher, teacher_bf16, tiny_teacher_shape
from mdist.data.masking import MaskingSpec
from mdist.data.shards import ShardBatchSource
from mdist.data.synthetic import SyntheticCorpus
from mdist.data.text import TextBatchSource, read_text_corpus
from mdist.checkpoint import Checkpointer, latest_tag
from mdist.engine import (
    barrier, batch_geometry, device_for_rank, gathered, init_distributed, load_partitioned_teacher, lost_peer, render_student_config,
    shutdown_distributed, student_engine, teacher_engine,
)
from mdist.encode import compile_encoder_layers
from mdist.errors import CheckpointError, DataError, DiskFullError, NonFiniteLossError
from mdist.export import export_students
from mdist.fused_encoder import enable_fused_encoder
from mdist.heldout import HeldOut, read_heldout
from mdist.host_memory import return_freed_tensors_to_the_system
from mdist.losses import DistillLoss
from mdist.plan import Plan, run_plan
from mdist.optim import build_optimizer, student_param_groups, warmup_linear_decay
from mdist.preemption import StopFlag
from mdist.rundir import clear_outputs
from mdist.students import StudentGroup
from mdist.teacher import build_tiny_teacher, check_vocabulary, load_teacher, teacher_shape
from mdist.tracking import Tracker
from mdist.tracking.facts import parameter_count, source_commit, versions
from mdist.train import distill_step


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def speed_up_encoder(model, train: TrainConfig) -> None:
    """`train.compile` or `train.encoder: fused` (the config refuses both together) on one model, in place."""
    if train.compile:
        compile_encoder_layers(model)
    if train.encoder == "fused":
        enable_fused_encoder(model)


def training_documents(cfg: RunConfig) -> dict[str, list[str]]:
    if cfg.data.kind == "synthetic":
        corpus = SyntheticCorpus(seed=cfg.train.seed)
        missing = [lang for lang in cfg.languages if lang not in corpus.languages]
        if missing:
            raise DataError(f"the synthetic corpus has no language(s) {', '.join(missing)} (it has {', '.join(corpus.languages)})")
        return {lang: corpus.monolingual(lang, documents=400) for lang in cfg.languages}
    return read_text_corpus({lang: cfg.data.text[lang] for lang in cfg.languages})


def batch_source(cfg: RunConfig, docs: dict[str, list[str]], tokenizer, vocab_size: int, rank: int, world: int):
    """Algorithm 1's per-language batches: streamed from shards, or from in-memory documents."""
    common = dict(
        batch_size=batch_geometry(cfg, world).per_rank,  # micro × accumulation sequences per language and rank
        masking=MaskingSpec.from_tokenizer(tokenizer, vocab_size, cfg.train.mlm_probability),
        seed=cfg.train.seed, rank=rank, world_size=world,
    )
    if cfg.data.kind == "shards":
        return ShardBatchSource.from_dir(
            cfg.data.shards, cfg.languages, tokenizer, seq_len=cfg.train.seq_len,
            num_workers=cfg.data.num_workers, shuffle_block=cfg.data.shuffle_block, worker_timeout_s=cfg.data.worker_timeout_s, **common,
        )
    return TextBatchSource.from_documents(docs, tokenizer, cfg.train.seq_len, **common)


def log_run_facts(tracker: Tracker, cfg: RunConfig, out_dir: Path, world: int, teacher, group: StudentGroup, plan: Plan) -> None:
    """Params: the resolved config flattened plus what it does not state (and the run's memory plan, `mdist plan`); artifacts: the config and
    the rendered DeepSpeed config (a resumed run keeps the params it first logged: the journal writes each once)."""
    geo = batch_geometry(cfg, world)
    tracker.log_params({
        **cfg.to_dict(),
        "run": {
            "world_size": world, "global_batch_per_language": geo.global_batch, "languages": ",".join(cfg.languages),
            "teacher_parameters": parameter_count(teacher), "student_parameters": parameter_count(*group.students.values()),
            "parameters_per_student": {name: parameter_count(student) for name, student in group.students.items()},
            "git_commit": source_commit(), **{f"version.{k}": v for k, v in versions("mdist", "torch", "deepspeed", "transformers").items()},
        },
        "plan": plan.as_dict(),
    })
    for name, content in (("run_config.json", cfg.to_dict()), ("deepspeed_config.json", render_student_config(cfg, world))):
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        tracker.log_artifact(out_dir / name)


def run_distillation(cfg: RunConfig, out_dir: Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Train, checkpoint and export. `resume`: continue from the latest complete checkpoint in
    `out_dir/checkpoints` (a fresh start when there is none); `overwrite`: first remove an earlier
    run's outputs (`mdist.rundir`). SIGTERM / SIGUSR1 save a checkpoint at the next step boundary and
    return early (summary['preempted'] = True, no export)."""
    tiny = cfg.teacher.path == TINY_RANDOM
    shape = tiny_teacher_shape(cfg.teacher.tiny) if tiny else teacher_shape(Path(cfg.teacher.path))
    check_against_teacher(cfg, shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = init_distributed(cfg.dist.timeout_s)
    memory_plan = run_plan(cfg, shape, world)  # the plan's memory model, before any model is built
    if overwrite and rank == 0:
        clear_outputs(out_dir)
    device = device_for_rank()
    if device.type == "cpu":
        return_freed_tensors_to_the_system()
    seed_everything(cfg.train.seed)

    docs = training_documents(cfg) if cfg.data.kind != "shards" else {}
    heldout_texts = read_heldout(cfg)  # before any model: a bad held-out file stops the run at once
    teacher_path = out_dir / "teacher" if tiny else Path(cfg.teacher.path)
    if rank == 0 and tiny:
        build_tiny_teacher(cfg.teacher, (d for ds in docs.values() for d in ds), teacher_path, cfg.train.seed)
    barrier("teacher ready")
    bf16 = teacher_bf16(cfg.teacher.dtype, gpu=device.type == "cuda")
    if cfg.teacher.zero3:  # ZeRO-3 teacher: built partitioned, no rank ever holds all of it
        teacher, tokenizer = load_partitioned_teacher(teacher_path, world, cfg.deepspeed.persistence_threshold, bf16)
    else:
        teacher, tokenizer = load_teacher(teacher_path)
    seed_everything(cfg.train.seed)
    group = StudentGroup(teacher, cfg.students, teacher.config.hidden_size)  # copies teacher tensors one by one
    check_vocabulary(tokenizer, group.students[next(iter(group.students))].config.vocab_size, "students")
    if cfg.teacher.zero3:
        teacher_ds = teacher_engine(teacher, world, cfg.deepspeed.persistence_threshold, bf16)  # keeps the partitioned teacher's hooks alive
        teacher = teacher_ds.module
    else:
        teacher.to(device, dtype=torch.bfloat16 if bf16 else torch.float32)
        speed_up_encoder(teacher, cfg.train)
    for student in group.students.values():
        speed_up_encoder(student, cfg.train)

    source = batch_source(cfg, docs, tokenizer, teacher.config.vocab_size, rank, world)
    heldout = HeldOut.build(cfg, heldout_texts, tokenizer, group, device)  # None unless train.eval_every
    loss_fn = DistillLoss.build(cfg.strategy, cfg.loss.weights, cfg.loss.mapping, cfg.loss.temperature, cfg.students.layers, teacher.config.num_hidden_layers, cfg.loss.kernels)
    groups = student_param_groups(dict(group.students), group.projections, cfg.train.weight_decay)
    optimizer = build_optimizer(cfg.train.optimizer, groups, cfg.train.lr, offload=cfg.deepspeed.offload_optimizer)
    scheduler = warmup_linear_decay(optimizer, cfg.train.warmup_steps, cfg.train.steps)
    engine = student_engine(group, optimizer, cfg, world)

    checkpoints = out_dir / "checkpoints"
    checkpointer = Checkpointer(checkpoints, rank)
    start_step, tokens_total, run_id, last_terms = 0, 0, None, {}
    restored = checkpointer.load(engine) if resume else None
    if restored is not None:
        source.load_state_dict(restored["data"])
        scheduler.load_state_dict(restored["scheduler"])
        for param_group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
            param_group["lr"] = lr
        start_step, tokens_total, run_id = restored["step"], restored["tokens"], restored["mlflow_run_id"]
        last_terms = restored.get("losses", {})
        if heldout is not None:
            heldout.load_state_dict(restored.get("heldout", {}))
        if rank == 0:
            for note in restored["notes"]:
                print(note, flush=True)
            print(f"resuming from {checkpoints / restored['tag']} at step {start_step}", flush=True)
    elif resume and rank == 0:
        print(f"no complete checkpoint in {checkpoints}; starting from step 0", flush=True)
    tracker = Tracker(out_dir, cfg.tracking.experiment, enabled=cfg.tracking.enabled and rank == 0, run_id=run_id, run_name=out_dir.name,
                      parent_run_id=cfg.tracking.parent_run_id, name="distill", fresh=not resume, parent_kind="sweep")
    if rank == 0 and cfg.tracking.enabled:
        log_run_facts(tracker, cfg, out_dir, world, teacher, group, memory_plan)

    def save(done: int) -> None:
        state = {"scheduler": scheduler.state_dict(), "tokens": tokens_total, "losses": last_terms, "mlflow_run_id": tracker.run_id}
        if heldout is not None:
            state["heldout"] = heldout.history
        checkpointer.save(engine, done, state, rank_state={"data": source.state_dict()})

    stop = StopFlag().install()
    preempted = None
    started = time.perf_counter()
    bar = tqdm(range(start_step, cfg.train.steps), desc="distill", disable=rank != 0, dynamic_ncols=True, initial=start_step, total=cfg.train.steps)

    def evaluate_heldout(done: int) -> None:  # every rank scores (see mdist.heldout); rank 0 logs
        if heldout is not None and heldout.due(done, cfg.train.steps):
            tracker.log_metrics(heldout.evaluate(engine, done), done)

    try:
        if start_step == 0:
            evaluate_heldout(0)  # the initialised students
        for step in bar:
            step_start = time.perf_counter()
            batches = {lang: b.to(device) for lang, b in source.next_batches().items()}
            lr = scheduler.get_last_lr()[0]  # the rate this step trained with
            result = distill_step(engine, optimizer, teacher, loss_fn, batches, cfg.train.update, step, cfg.train.grad_accum)
            scheduler.step()
            tokens_total += result.tokens * world
            last_terms = result.terms
            tokens_per_s = result.tokens * world / (time.perf_counter() - step_start)
            mean_loss = sum(t["loss"] for t in result.terms.values()) / len(result.terms)
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            if step % cfg.train.log_every == 0 or step == cfg.train.steps - 1:
                metrics = {f"{pair}/{term}": value for pair, terms in result.terms.items() for term, value in terms.items()}
                metrics.update(lr=lr, tokens_per_s=tokens_per_s, tokens=tokens_total)
                grad_norm = engine.get_global_grad_norm()  # the last optimiser step's, where DeepSpeed reports it (ZeRO >= 1)
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                if device.type == "cuda":
                    metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                metrics["peak_rss_gib"] = peak_rss_gib()
                tracker.log_metrics(metrics, step)
            done = step + 1
            evaluate_heldout(done)  # before a save, so checkpoints hold the history up to `done`
            if stop.agreed():  # collective: every rank stops at the same step boundary
                save(done)
                preempted = done
                break
            if (cfg.train.save_every and done % cfg.train.save_every == 0) or done == cfg.train.steps:
                save(done)
    except NonFiniteLossError as err:
        tracker.close("FAILED")
        tag = latest_tag(checkpoints)
        kept = f"last good checkpoint: {checkpoints / tag}" if tag else "no checkpoint was written before it"
        raise NonFiniteLossError(f"{err}; {kept}") from None
    except (DiskFullError, CheckpointError):  # a checkpoint no rank could finish (every rank raises it, see Checkpointer.save)
        try:
            tracker.close(status=None)  # RUNNING, as after a pre-emption: --resume continues the MLflow run
        except OSError:
            pass  # the full disk may refuse the journal's status record too; the error raised below says what matters
        shutdown_distributed()
        raise
    except RuntimeError as err:  # a rank lost mid-collective: one line naming its address, not a traceback
        lost = lost_peer(err)
        if lost is None:
            raise
        raise lost from None
    finally:
        stop.restore()
        source.close()
    if preempted is not None:
        if rank == 0:
            print(f"received signal {stop.signum or 'on another rank'}: saved {checkpoints / f'step{preempted}'}; "
                  "continue with --resume", flush=True)
        tracker.close(status=None)  # the MLflow run stays RUNNING on purpose: --resume continues it
        shutdown_distributed()
        return {"steps": preempted, "preempted": True, "mlflow_run_id": tracker.run_id}

    summary = {
        "steps": cfg.train.steps,
        "tokens": tokens_total,
        "seconds": time.perf_counter() - started,
        "world_size": world,
        "strategy": cfg.strategy,
        "update": cfg.train.update,
        "students": {name: {"languages": langs} for name, langs in group.languages.items()},
        "final_losses": last_terms,
        "mlflow_run_id": tracker.run_id,
    }
    if heldout is not None:
        summary["heldout"] = heldout.history  # {"<student>/<lang>": [{"step", "ppl", "loss"}, ...]}
    with gathered(group):  # ZeRO-3: full student tensors on every rank (collective), rank 0 writes
        if rank == 0:
            facts = {"teacher": str(teacher_path), "strategy": cfg.strategy, "steps": cfg.train.steps, "tokens": tokens_total}
            paths = export_students(group, tokenizer, out_dir, facts)
            for name, path in paths.items():
                summary["students"][name]["path"] = str(path)
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
            tracker.log_artifact(out_dir / "summary.json")
            for name, path in paths.items():
                tracker.log_artifact(path / "README.md", f"students/{name}")  # one model card per student
    tracker.close()
    shutdown_distributed()  # final barrier + destroy the process group (see mdist.engine)
    return summary
