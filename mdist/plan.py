"""Will a run fit, before anything loads: per-rank memory by part (mdist.memory), the ZeRO stage, offload
and micro-batch that fit, and the expected tokens/s. Used by `mdist plan` and, first, by `mdist distill`.

Layouts are tried in order of cost: at the configured micro-batch first, the run's own layout, then
student ZeRO 0, 1, 2, 2 with a ZeRO-3 teacher, 3 with a ZeRO-3 teacher, and that with the optimiser
offloaded to CPU memory; then the same at half the micro-batch (accumulation doubled, so the global batch
stays), while the micro-batch halves evenly, down to 1. Layouts the config forbids (lamb needs stage 0, compile and the fused encoder no stage
3, adamw_fused no offload) are skipped. Of a GPU's memory HEADROOM is held back for the allocator's
fragmentation.

Expected tokens/s = GPUs × MFU × 989 TFLOP/s (H100/H200 dense bf16) / FLOPs per token (teacher forward
+ 3 × student forward), with the MFU benchmarks/throughput.py measured for mdist's step (XLM-R base,
one H200, loss.kernels triton, commit 094d5da, benchmarks/RESULTS.md): 20.2 % at 16 × 512 tokens per
micro-batch, 26.8 % at 64 × 512; the nearer one is used. Measured on one GPU without ZeRO: ZeRO-3
gathers and offload lower it, so for those layouts the figure is an upper bound.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from mdist.config import RunConfig, check_zero_settings
from mdist.errors import ConfigError
from mdist.memory import GIB, KEPT, PARTS, TRANSIENT, Layout, Shape, Students, Workload, per_rank
from mdist.strategies import STRATEGIES, layer_mapping

HEADROOM = 0.1
PEAK_FLOPS = 989e12
MEASURED_MFU = ((16 * 512, 0.202), (64 * 512, 0.268))  # (tokens per micro-batch, MFU): benchmarks/RESULTS.md, 2026-11-28 00:51-00:52
MFU_SOURCE = "MFU measured by benchmarks/throughput.py on one H200 (XLM-R base, triton kernels): 20.2 % at 16×512, 26.8 % at 64×512 tokens per micro-batch"
ORDER = ((0, False, False), (1, False, False), (2, False, False), (2, True, False), (3, True, False), (3, True, True))


@dataclass(frozen=True)
class Plan:
    """The configured layout's bytes per rank, and the first layout that fits (None: nothing fits)."""

    gpus: int
    gpu_mem_gib: float
    gpu: bool
    work: Workload
    configured: Layout
    configured_bytes: dict[str, float]
    fitting: Layout | None
    fitting_bytes: dict[str, float] | None

    @property
    def budget(self) -> float:
        return budget_bytes(self.gpu_mem_gib, self.gpu)

    @property
    def fits_as_configured(self) -> bool:
        return self.configured_bytes["total"] <= self.budget

    @property
    def tokens_per_s(self) -> float | None:
        """None when nothing fits or on CPU ranks (the MFU is a GPU's)."""
        return None if self.fitting is None or not self.gpu else expected_tokens_per_s(self.work, self.fitting.micro_batch, self.gpus)

    def as_dict(self) -> dict:
        """Flat keys and numbers (MLflow params / metrics)."""
        out = {"gpus": self.gpus, "gpu_mem_gib": self.gpu_mem_gib, "fits": self.fitting is not None, "fits_as_configured": self.fits_as_configured,
               "teacher_params": self.work.teacher.params, "student_params": self.work.students.params(self.work.teacher)}
        for part, value in self.configured_bytes.items():
            out[f"configured.{part.replace(' ', '_')}_gib"] = round(value / GIB, 3)
        if self.fitting is not None:
            out.update({f"fit.{k}": v for k, v in dataclasses.asdict(self.fitting).items()})
            out.update({f"fit.{part.replace(' ', '_')}_gib": round(value / GIB, 3) for part, value in self.fitting_bytes.items()})
            if self.tokens_per_s is not None:
                out["tokens_per_s"] = round(self.tokens_per_s)
        return out

    def table(self) -> str:
        """Per-rank GiB by part, as configured and as fitted; the settings and tokens/s below."""
        cols = [("as configured", self.configured_bytes)] + ([("fits", self.fitting_bytes)] if self.fitting and self.fitting != self.configured else [])
        lines = [f"{'GiB per rank':<18}" + "".join(f"{name:>15}" for name, _ in cols)]
        for part in (*KEPT, *TRANSIENT, "step peak", "building", "total"):
            lines.append(f"{part:<18}" + "".join(f"{b[part] / GIB:>15.2f}" for _, b in cols))
        lines.append("(kept: teacher to buffers; transient, of which the largest moment counts (step peak): activations + loss terms"
                     " + logits + the decoder's gradient V·D', the head gradients, the optimizer step; building: the teacher's"
                     " loading; total = the larger of building and kept + step peak)")
        lines.append(f"{'budget':<18}{self.budget / GIB:>15.2f}  ({self.gpus} × {self.gpu_mem_gib:g} GiB" + (f", {HEADROOM:.0%} held back)" if self.gpu else ")"))
        lines.append("layout            " + describe(self.configured) + ("  (fits)" if self.fits_as_configured else "  (does not fit)"))
        if self.fitting is None:
            lines.append("nothing fits: no ZeRO stage, offload or micro-batch brings it under the budget")
        else:
            if self.fitting != self.configured:
                lines.append("would fit         " + describe(self.fitting) + ": " + " ".join(settings(self.fitting)))
            if self.tokens_per_s is not None:
                bound = "; an upper bound with ZeRO-3 or offload" if self.fitting.teacher_zero3 or self.fitting.zero_stage == 3 or self.fitting.offload_optimizer else ""
                lines.append(f"expected          {self.tokens_per_s:,.0f} tokens/s on {self.gpus} GPU(s) ({MFU_SOURCE}{bound})")
        return "\n".join(lines)


def budget_bytes(gpu_mem_gib: float, gpu: bool = True) -> float:
    """Bytes a rank may plan for: a GPU's memory less HEADROOM; a CPU rank's stated budget whole."""
    return gpu_mem_gib * GIB * ((1 - HEADROOM) if gpu else 1)


def describe(layout: Layout) -> str:
    return (f"students ZeRO {layout.zero_stage}, teacher {'ZeRO-3' if layout.teacher_zero3 else 'replicated'}, "
            f"optimiser {'offloaded' if layout.offload_optimizer else 'on GPU'}, micro-batch {layout.micro_batch} × accumulation {layout.grad_accum}")


def settings(layout: Layout) -> list[str]:
    """The `--set` overrides that give `layout`."""
    return [f"deepspeed.zero_stage={layout.zero_stage}", f"teacher.zero3={str(layout.teacher_zero3).lower()}",
            f"deepspeed.offload_optimizer={str(layout.offload_optimizer).lower()}", f"train.batch_size={layout.micro_batch}", f"train.grad_accum={layout.grad_accum}"]


def workload(cfg: RunConfig, teacher: Shape, students: int | None = None) -> Workload:
    """What a step of `cfg` computes; `students`: that many one-language students instead of the recipe's group."""
    s = cfg.students
    group = Students(len(s.groups) if students is None else students, s.layers, s.hidden, s.share_embeddings, s.tie_head)
    languages = len(cfg.languages) if students is None else max(students, len(cfg.languages))
    spec = STRATEGIES[cfg.strategy]
    pairs = len(layer_mapping(cfg.loss.mapping or spec.mapping, s.layers, teacher.layers))
    return Workload(teacher, group, cfg.train.seq_len, languages, cfg.train.update == "joint", cfg.loss.kernels == "triton",
                    hidden_pairs=(pairs if "hid" in spec.terms else 0) + ("emb" in spec.terms), attention_pairs=pairs if "att" in spec.terms else 0,
                    teacher_dtype=cfg.teacher.dtype)


def configured_layout(cfg: RunConfig) -> Layout:
    return Layout(cfg.deepspeed.zero_stage, cfg.teacher.zero3, cfg.deepspeed.offload_optimizer, cfg.train.batch_size, cfg.train.grad_accum)


def _allowed(cfg: RunConfig, layout: Layout) -> bool:
    """Whether the config with `layout`'s settings passes the config's own ZeRO rules."""
    trial = dataclasses.replace(cfg, deepspeed=dataclasses.replace(cfg.deepspeed, zero_stage=layout.zero_stage, offload_optimizer=layout.offload_optimizer))
    try:
        check_zero_settings(trial)
    except ConfigError:
        return False
    return True


def candidates(cfg: RunConfig, offload: bool = True):
    """Layouts in the order tried (module docstring); `offload` False: none that offloads the optimiser."""
    own = configured_layout(cfg)
    micro, accum = own.micro_batch, own.grad_accum
    while micro >= 1:
        if micro == own.micro_batch:
            yield own
        for stage, teacher_zero3, offloaded in ORDER:
            layout = Layout(stage, teacher_zero3, offloaded, micro, accum)
            if layout != own and _allowed(cfg, layout) and (offload or not layout.offload_optimizer):
                yield layout
        if micro % 2:
            break
        micro, accum = micro // 2, accum * 2


def plan(cfg: RunConfig, teacher: Shape, gpus: int, gpu_mem_gib: float, gpu: bool = True, offload: bool = True) -> Plan:
    """The configured layout's bytes per rank and the first layout that fits `gpus` × `gpu_mem_gib`
    (`gpu`: bf16 on GPUs; False: fp32 on CPU ranks); `offload` False: no layout that offloads the optimiser."""
    work = workload(cfg, teacher)
    own = configured_layout(cfg)
    result = Plan(gpus, gpu_mem_gib, gpu, work, own, per_rank(work, own, gpus, gpu), None, None)
    for layout in candidates(cfg, offload):
        need = per_rank(work, layout, gpus, gpu)
        if need["total"] <= result.budget:
            return dataclasses.replace(result, fitting=layout, fitting_bytes=need)
    return result


def expected_tokens_per_s(work: Workload, micro_batch: int, gpus: int) -> float:
    """Tokens/s of all GPUs together at the measured MFU nearest this micro-batch (module docstring)."""
    tokens = micro_batch * work.seq_len
    mfu = min(MEASURED_MFU, key=lambda m: abs(m[0] - tokens))[1]
    student = work.students.shape(work.teacher)
    flops = work.teacher.forward_flops_per_token(work.seq_len) + 3 * student.forward_flops_per_token(work.seq_len)
    return gpus * mfu * PEAK_FLOPS / flops


def most_students(cfg: RunConfig, teacher: Shape, gpus: int, gpu_mem_gib: float, layout: Layout, limit: int = 4096) -> int:
    """How many one-language students fit in `layout` (0 if not even one)."""
    def fits(n: int) -> bool:
        return per_rank(workload(cfg, teacher, n), layout, gpus)["total"] <= budget_bytes(gpu_mem_gib)

    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def refusal(result: Plan) -> str | None:
    """The one line `mdist distill` stops with when the configured run cannot fit, or None."""
    if result.fits_as_configured:
        return None
    need, have = result.configured_bytes["total"], result.budget
    largest = max(PARTS, key=lambda p: result.configured_bytes[p])
    head = (f"the run needs {need / GIB:,.2f} GiB per rank, {(need - have) / GIB:,.2f} GiB more than the {have / GIB:,.2f} GiB budget "
            f"of each of {result.gpus} rank(s) (largest part: {largest}, {result.configured_bytes[largest] / GIB:,.2f} GiB)")
    if result.fitting is None:
        return head + "; nothing fits on this many ranks: add ranks or shrink the students (see `mdist plan`)"
    return head + "; would fit: --set " + " --set ".join(settings(result.fitting))


def memory_budget(cfg: RunConfig) -> tuple[float, bool] | None:
    """(GiB per rank, on a GPU) that `mdist distill` plans against: `dist.memory_gib` where the config states
    it, else this rank's GPU; None on CPU ranks without a stated budget (no check)."""
    import torch  # noqa: PLC0415 (loaded by the run by then)

    gpu = torch.cuda.is_available()
    if cfg.dist.memory_gib is not None:
        return cfg.dist.memory_gib, gpu
    if gpu:
        return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", 0))).total_memory / GIB, True
    return None


def run_plan(cfg: RunConfig, teacher_config: dict, world: int) -> Plan:
    """The run's plan (logged with it), made before any model is built; stops `mdist distill` with one line
    when its layout cannot fit the budget. CPU ranks without a stated budget are planned against this
    machine's memory shared by its local ranks, for the record only: no check."""
    from mdist.memory import shape_from_config

    budget = memory_budget(cfg)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB / max(1, local_ranks)
    result = plan(cfg, shape_from_config(teacher_config), world, *(budget or (host, False)))
    line = refusal(result) if budget is not None else None
    if line:
        raise ConfigError(line)
    return result


def teacher_of(cfg: RunConfig) -> Shape:
    """The teacher's shape without loading it: tiny-random's, its directory's config.json, or the published size
    its path names."""
    from mdist.config import TINY_RANDOM, tiny_teacher_shape
    from mdist.memory import XLMR, shape_from_config, teacher_shape_at

    if cfg.teacher.path == TINY_RANDOM:
        return shape_from_config(tiny_teacher_shape(cfg.teacher.tiny))
    shape = teacher_shape_at(cfg.teacher.path)
    if shape is None:
        raise ConfigError(f"config key 'teacher.path': '{cfg.teacher.path}' has no config.json and names no published XLM-R size ({', '.join(XLMR)})")
    return shape


def plan_recipe(recipe: str, overrides: list[str], gpus: int, gpu_mem_gib: float, gpu: bool = True) -> Plan:
    from mdist.config import load_run_config

    cfg = load_run_config(recipe, overrides, check_paths=False)
    return plan(cfg, teacher_of(cfg), gpus, gpu_mem_gib, gpu)


README_RECIPES = ("xlmr-base-monoshot", "xlmr-base-wide-students", "xlmr-large-monoshot", "xlmr-xl-monoshot", "xlmr-xxl-monoshot")
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)


def readme_table(gpu_mem_gib: float = 80.0) -> str:
    """Markdown: for each size's recipe, the fewest GPUs (of GPU_COUNTS) it fits on with the optimiser on the
    GPU, the layout found there, how many one-language students that layout holds, the expected tokens/s;
    and the fewest GPUs with the optimiser offloaded to CPU memory (slower: CPU Adam)."""
    from mdist.config import load_run_config

    rows = ["| recipe | teacher | students | GPUs needed | layout | micro-batch × accumulation | students per run | expected tokens/s | GPUs with optimiser offload |",
            "|---|---|---|---|---|---|---|---|---|"]
    for recipe in README_RECIPES:
        cfg = load_run_config(recipe, check_paths=False)
        teacher = teacher_of(cfg)
        found = next((p for p in (plan(cfg, teacher, n, gpu_mem_gib, offload=False) for n in GPU_COUNTS) if p.fitting is not None), None)
        offloaded = next((n for n in GPU_COUNTS if plan(cfg, teacher, n, gpu_mem_gib).fitting is not None), f"> {GPU_COUNTS[-1]}")
        student = workload(cfg, teacher).students
        size = f"{student.count} × {student.layers} layers × {student.shape(teacher).hidden}"
        if found is None:
            rows.append(f"| {recipe} | {teacher.params / 1e9:.2f} B | {size} | > {GPU_COUNTS[-1]} | - | - | - | - | {offloaded} |")
            continue
        f = found.fitting
        layout = f"students ZeRO {f.zero_stage}, teacher {'ZeRO-3' if f.teacher_zero3 else 'replicated'}"
        rows.append(f"| {recipe} | {teacher.params / 1e9:.2f} B | {size} | {found.gpus} | {layout} | {f.micro_batch} × {f.grad_accum} | "
                    f"{most_students(cfg, teacher, found.gpus, gpu_mem_gib, f)} | {found.tokens_per_s:,.0f} | {offloaded} |")
    return "\n".join(rows)
