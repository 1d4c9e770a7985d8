"""Exact resume: a run killed (SIGKILL) or pre-empted (SIGTERM) after a checkpoint and resumed with
`--resume` ends with byte-identical exported students to an uninterrupted run, for every data kind,
with and without loader workers, on one and two ranks.

Signals go to the run's whole process group, as a scheduler or a terminal sends them (loader workers
and the torchrun agent included). The teacher keeps its dropout, so a resumed run that drew its
random numbers differently would differ. The uninterrupted reference runs beside the interrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mdist.engine import free_port, without_launcher_variables

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 8
ARGS = ["--recipe", "tiny", "--set", f"train.steps={STEPS}", "--set", "train.save_every=3"]


@dataclass(frozen=True)
class Case:
    data: str  # synthetic | text | shards; synthetic and text runs are also tracked (MLflow)
    sig: signal.Signals
    workers: int = 0
    ranks: int = 1

    @property
    def id(self) -> str:
        return f"{self.data}-{self.workers}workers-{self.ranks}ranks-{self.sig.name}"


TRACKED = ("synthetic", "text")  # one pre-empted (SIGTERM) and one killed (SIGKILL) tracked run
CASES = [  # synthetic data goes through the text source: one case each is enough
    Case("synthetic", signal.SIGTERM),
    Case("text", signal.SIGKILL),
    Case("shards", signal.SIGKILL, workers=0),
    Case("shards", signal.SIGTERM, workers=2),
    Case("shards", signal.SIGTERM, workers=2, ranks=2),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synthetic_docs) -> dict[str, list[str]]:
    """`--set` options per data kind: the synthetic docs as text files and as `mdist prep` shards."""
    from mdist.data.prep import ShardLimits, prepare

    root = tmp_path_factory.mktemp("corpus")
    for lang, docs in synthetic_docs.items():
        (root / f"{lang}.txt").write_text("".join(d + "\n\n" for d in docs))
        prepare(lang, [root / f"{lang}.txt"], root / "shards", ShardLimits(max_documents=15), progress=False)
    return {
        "synthetic": [],
        "text": ["data.kind=text", f"data.text={{en: [{root}/en.txt], tr: [{root}/tr.txt]}}"],
        "shards": ["data.kind=shards", f"data.shards={root / 'shards'}", "data.shuffle_block=4"],
    }


def _env() -> dict:
    env = without_launcher_variables(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    return env


def _command(case: Case, sets: list[str], out: Path, *extra: str) -> list[str]:
    launcher = [sys.executable] if case.ranks == 1 else [str(BIN / "torchrun"), "--nproc_per_node", str(case.ranks), "--master_port", str(free_port())]
    tracked = f"tracking.enabled={case.data in TRACKED}"
    options = [item for s in [*sets, f"data.num_workers={case.workers}", tracked] for item in ("--set", s)]
    return [*launcher, "-m", "mdist", "distill", *ARGS, *options, "--out", str(out), *extra]


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    return output


def _signal_at_first_checkpoint(proc: subprocess.Popen, out: Path, sig: signal.Signals) -> None:
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.is_file():
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, sig)


def _students(out: Path) -> dict[str, bytes]:
    return {name: (out / "students" / name / "model.safetensors").read_bytes() for name in ("en", "tr")}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_interrupted_and_resumed_run_exports_the_same_bytes(case, corpus, tiny_teacher_dir, tmp_path):
    sets = [f"teacher.path={tiny_teacher_dir}", *corpus[case.data]]
    reference = _start(_command(case, sets, tmp_path / "reference"))
    interrupted = _start(_command(case, sets, tmp_path / "run"))
    _signal_at_first_checkpoint(interrupted, tmp_path / "run", case.sig)
    output, _ = interrupted.communicate(timeout=120)
    if case.sig == signal.SIGKILL:
        assert interrupted.returncode == -signal.SIGKILL
    else:  # every rank saves at the next step boundary and exits 0 (torchrun's agent raises on the signal it got)
        assert output.count("stopped by signal") == case.ranks, output[-4000:]
        assert case.ranks > 1 or (interrupted.returncode == 0 and "Traceback" not in output), output[-4000:]
    tag = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert not (tmp_path / "run" / "summary.json").exists() and tag != f"step{STEPS}", "the run finished before it was interrupted"

    resumed = _finish(_start(_command(case, sets, tmp_path / "run", "--resume")))
    assert f"checkpoints/{tag} at step" in resumed
    _finish(reference)
    assert _students(tmp_path / "run") == _students(tmp_path / "reference")
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("run", "reference")]
    assert summaries[0]["tokens"] == summaries[1]["tokens"] > 0  # the token count is restored, not restarted
    if case.data in TRACKED:  # after SIGKILL the resumed run recomputes steps the killed one had logged: none twice
        from mlflow.tracking import MlflowClient  # one MLflow run across the interruption, finished by the resumed run

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
        runs = client.search_runs(["0", "1"])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        for name in ("tr/tr/loss", "lr", "tokens"):  # every step once: before the signal by the first process, after it by the resumed one
            assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, name)) == list(range(STEPS)), name
        tokens = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "tokens")}
        reference_client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'reference' / 'mlflow.db'}")
        (reference_run,) = reference_client.search_runs(["0", "1"])
        assert tokens == {m.step: m.value for m in reference_client.get_metric_history(reference_run.info.run_id, "tokens")}
        if case.data == "synthetic":  # packed synthetic documents fill every sequence: languages x batch x length per step
            assert tokens == {step: (step + 1) * 2 * 4 * 32 for step in range(STEPS)}

