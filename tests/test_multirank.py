"""Two ranks on the CPU over gloo: ZeRO-2 / ZeRO-3 students with a ZeRO-3 (partitioned) teacher
train and export, and equal a one-rank run of the same global batch; the `deepspeed` launcher works;
compiled encoder layers (`train.compile`), the fused encoder (`train.encoder: fused`) and the fused AdamW,
at ZeRO-2, equal the plain one-rank run.

Equality needs identical math on both sides, so the teacher (and hence the students) has dropout 0
and the strategy averages over valid tokens only (`tinybert`: hid + att + emb; the synthetic corpus
packs to full sequences, so each rank's share of tokens is exactly half). Strategies with terms
averaged over *masked* positions (mlm, kl) differ slightly: each rank averages over its own masked
count and DeepSpeed averages the ranks' gradients.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdist.engine import free_port, without_launcher_variables

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMON = ["--recipe", "tiny", "--set", "strategy=tinybert", "--set", "train.steps=3", "--set", "deepspeed.persistence_threshold=0"]


def _env() -> dict:
    env = without_launcher_variables(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    return env


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "terminate called" not in proc.stderr
    return proc


def _torchrun(out: Path, *sets: str) -> subprocess.CompletedProcess:
    """Two ranks of `mdist distill`; each of `sets` is a `--set` item, or a flag when it starts with '--'."""
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "mdist", "distill", *COMMON, "--out", str(out)]
    for s in sets:
        cmd += [s] if s.startswith("--") else ["--set", s]
    return _run(cmd)


def _students(out: Path) -> dict:
    return {name: load_file(out / "students" / name / "model.safetensors") for name in ("en", "tr")}


@pytest.fixture(scope="module")
def one_rank(recipe_teacher_dir, tmp_path_factory) -> dict:
    """One process, global batch 4 per language, ZeRO-0, replicated teacher."""
    out = tmp_path_factory.mktemp("one")
    _run([sys.executable, "-m", "mdist", "distill", *COMMON, "--out", str(out), "--set", f"teacher.path={recipe_teacher_dir}", "--set", "train.batch_size=4"])
    return _students(out)


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_zero_students_zero3_teacher_equal_one_rank(stage, recipe_teacher_dir, one_rank, tmp_path):
    _torchrun(tmp_path, f"teacher.path={recipe_teacher_dir}", "teacher.zero3=true", f"deepspeed.zero_stage={stage}", "train.batch_size=2")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    two = _students(tmp_path)
    for name in one_rank:
        for key, ref in one_rank[name].items():
            assert two[name][key].shape == ref.shape, f"{name}/{key}: exported shape {tuple(two[name][key].shape)} (not gathered?)"
            torch.testing.assert_close(two[name][key], ref, rtol=1e-4, atol=1e-5, msg=f"{name}/{key}")
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "students" / "en")
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "sets",
    [("train.compile=true",), ("train.encoder=fused",), ("train.optimizer=adamw_fused",)],
    ids=["compiled_layers", "fused_encoder", "fused_adamw"],
)
def test_speed_options_equal_the_plain_run(sets, recipe_teacher_dir, one_rank, tmp_path):
    """Inside a ZeRO-2 engine: torch.compile'd teacher and student layers (inductor on the CPU), mdist's
    fused encoder layer, or the fused AdamW kernel (with the group masking), train the same students
    as the plain run."""
    cmd = [sys.executable, "-m", "mdist", "distill", *COMMON, "--out", str(tmp_path), "--set", f"teacher.path={recipe_teacher_dir}",
           "--set", "train.batch_size=4", "--set", "deepspeed.zero_stage=2"]
    for s in sets:
        cmd += ["--set", s]
    _run(cmd)
    trained = _students(tmp_path)
    for name in one_rank:
        for key, ref in one_rank[name].items():
            torch.testing.assert_close(trained[name][key], ref, rtol=1e-4, atol=1e-5, msg=f"{name}/{key}")


@pytest.mark.skipif(shutil.which("deepspeed", path=str(BIN)) is None, reason="deepspeed launcher not installed")
def test_deepspeed_launcher_two_ranks(recipe_teacher_dir, one_rank, tmp_path):
    """`deepspeed --num_gpus 2` on a CPU machine (DS_ACCELERATOR=cpu): ZeRO-1, grad accumulation 2,
    micro-batch 1: the same global batch of 4 per language as the one-rank run, and the same students."""
    cmd = [str(BIN / "deepspeed"), "--num_nodes", "1", "--num_gpus", "2", "--master_port", str(free_port()), "--module", "mdist", "distill",
           *COMMON, "--out", str(tmp_path), "--set", f"teacher.path={recipe_teacher_dir}", "--set", "deepspeed.zero_stage=1",
           "--set", "train.grad_accum=2", "--set", "train.batch_size=1"]
    _run(cmd)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and set(summary["students"]) == {"en", "tr"}
    two = _students(tmp_path)
    for name in one_rank:
        for key, ref in one_rank[name].items():
            torch.testing.assert_close(two[name][key], ref, rtol=1e-4, atol=1e-5, msg=f"{name}/{key}")


def test_zero3_teacher_is_never_whole_on_a_rank(recipe_teacher_dir, tmp_path):
    """Loading the partitioned teacher, initialising students from it and running it: each of 2 ranks
    holds its half and at most a few full tensors at once, never the whole teacher."""
    _run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), str(ROOT / "tests" / "zero3_teacher_peak.py"),
          str(recipe_teacher_dir), str(tmp_path / "peak.json")])
    peak = json.loads((tmp_path / "peak.json").read_text())
    assert peak["shard"] <= peak["whole"] / 2 + 64  # its half (shards are padded to equal sizes)
    assert peak["largest"] <= peak["peak_gathered"] < 3 * peak["largest"]  # tensor by tensor, a module's few at most
    assert peak["shard"] + peak["peak_gathered"] < 0.8 * peak["whole"], peak


def test_two_rank_zero3_checkpoint_with_a_flipped_byte_in_rank1s_file_is_caught(recipe_teacher_dir, tmp_path):
    """ZeRO-3 on 2 ranks: every rank's partition files carry a sha256 in `COMPLETE` (each rank hashes
    what it writes, rank 0 gathers). One bit flipped in rank 1's optimiser partition of the newest
    checkpoint: `runs verify` names the file and exits 1; `--resume` names it, continues from the
    checkpoint before, and exports the uninterrupted run's students."""
    sets = [f"teacher.path={recipe_teacher_dir}", "deepspeed.zero_stage=3", "train.batch_size=2", "train.save_every=1"]
    _torchrun(tmp_path / "reference", *sets)
    step2 = tmp_path / "reference" / "checkpoints" / "step2"
    marker = json.loads((step2 / "COMPLETE").read_text())
    partitions = {f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim")}
    assert set(marker["sha256"]) == set(marker["files"]) == partitions | {"rank0.pt", "rank1.pt"}

    run = tmp_path / "run"
    shutil.copytree(tmp_path / "reference" / "checkpoints", run / "checkpoints")
    shutil.rmtree(run / "checkpoints" / "step3")  # stopped after step 2
    (run / "checkpoints" / "latest").write_text("step2")
    broken = run / "checkpoints" / "step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0x01
    broken.write_bytes(bytes(data))

    verify = subprocess.run([sys.executable, "-m", "mdist", "runs", "verify", str(run)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1 and f"  {broken} does not match the sha256" in verify.stdout, verify.stdout + verify.stderr[-2000:]
    resumed = _torchrun(run, *sets, "--resume").stdout
    assert f"{broken} does not match the sha256 that {broken.parent / 'COMPLETE'} records for it" in resumed, resumed[-3000:]
    assert f"resuming from {run / 'checkpoints' / 'step1'} at step 1" in resumed
    for name in ("en", "tr"):
        path = Path("students") / name / "model.safetensors"
        assert (run / path).read_bytes() == (tmp_path / "reference" / path).read_bytes(), name


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mdist distill: error: ")]


def _run_bounded(cmd: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """`cmd` in a session of its own, all of it killed when it overruns `timeout` (a hang fails the
    test without leaving ranks behind)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still waiting after {timeout} s: {' '.join(cmd)}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.timeout(150)
def test_a_rank_that_never_reaches_a_barrier_stops_the_run(recipe_teacher_dir, tmp_path):
    """Rank 1 stalls before the first barrier: rank 0 waits `dist.timeout_s`, then stops with one line
    naming rank 1 and the barrier, and torchrun ends the run non-zero (it stops the stalled rank)."""
    timeout = 8  # above the two ranks' start-up skew on a loaded machine (forming the group waits as long)
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), str(ROOT / "tests" / "stall_rank.py"),
           "distill", *COMMON, "--out", str(tmp_path), "--set", f"teacher.path={recipe_teacher_dir}", "--set", f"dist.timeout_s={timeout}"]
    proc = _run_bounded(cmd, {**_env(), "STALL_RANK": "1"}, timeout=140)
    assert proc.returncode != 0
    assert _error_lines(proc.stderr) == [f"mdist distill: error: rank 0: rank(s) 1 did not reach the barrier 'teacher ready' within {timeout} s (dist.timeout_s)"], proc.stderr[-3000:]


@pytest.mark.timeout(90)
def test_a_rank_that_never_joins_stops_the_run(tmp_path):
    """Rank 0 of 2 started alone (the other never launched): it stops after `dist.timeout_s`, naming the
    rendezvous address, with exit code 2."""
    port = free_port()
    env = {**_env(), "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    cmd = [sys.executable, "-m", "mdist", "distill", *COMMON, "--out", str(tmp_path), "--set", "dist.timeout_s=2"]
    proc = _run_bounded(cmd, env, timeout=80)
    assert proc.returncode == 2
    (line,) = _error_lines(proc.stderr)
    assert line.startswith(f"mdist distill: error: rank 0 of 2: the process group at 127.0.0.1:{port} did not form within 2 s (dist.timeout_s): "), proc.stderr[-3000:]
    assert "1/2 clients joined" in line


def test_xl_width_teacher_zero3_sharded_forward_equals_the_whole_one(tmp_path, synthetic_docs):
    """An XLM-R XL-width teacher (2560 wide, 32 heads, 10240 FFN, pre-LayerNorm XLMRobertaXL layers; 2 of
    them and a 300-piece vocabulary, 158 M parameters): partitioned across 2 ranks by ZeRO-3, each rank
    holding half, its forward (every hidden state, Q/K, the MLM head's rows and the gathered decoder)
    equals the forward of the same weights loaded whole by Hugging Face. With `teacher.dtype: bf16` (how
    CPU ranks hold an XL teacher in half the memory) the partitions and outputs are bf16 and the sharded
    forward is the whole bf16 model's."""
    from transformers import XLMRobertaXLConfig, XLMRobertaXLForMaskedLM

    from mdist.tokenizer import train_xlmr_tokenizer

    teacher = tmp_path / "xl-width"
    tokenizer = train_xlmr_tokenizer((d for docs in synthetic_docs.values() for d in docs), 300, teacher, 62)
    torch.manual_seed(0)
    config = XLMRobertaXLConfig(vocab_size=len(tokenizer), hidden_size=2560, num_hidden_layers=2, num_attention_heads=32, intermediate_size=10240,
                                max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id, type_vocab_size=1)
    XLMRobertaXLForMaskedLM(config).save_pretrained(str(teacher))
    _run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), str(ROOT / "tests" / "zero3_xl_forward.py"),
          str(teacher), str(tmp_path / "forward.json")])
    result = json.loads((tmp_path / "forward.json").read_text())
    assert result["model_type"] == "xlm-roberta-xl" and result["hidden"] == 2560 and result["shapes_equal"]
    assert 0.49 < result["share"] <= 0.5 + 1e-4  # each rank holds its half (shards padded to equal sizes)
    assert set(result["diff"]) >= {"hidden0", "hidden2", "q0", "k1", "head", "decoder"}
    for name, diff in result["diff"].items():
        assert diff <= 1e-5 * max(result["scale"][name], 1.0), (name, diff, result["scale"][name])
    # teacher.dtype bf16 (CPU ranks too): partitions and outputs in bf16, the sharded forward that of the whole bf16 model
    half = result["bf16"]
    assert half["partition_dtypes"] == ["torch.bfloat16"] and half["output_dtypes"] == ["torch.bfloat16"], half
    for name, diff in half["diff"].items():
        assert diff <= 1e-2 * max(half["scale"][name], 1.0), (name, diff, half["scale"][name])
