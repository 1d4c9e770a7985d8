"""Shared fixtures: tiny teachers and tokenizers built in-process; real data from ../shared/data when present.

Triton kernels run on the CPU only under the interpreter, which must be chosen before `mdist.kernels`
is first imported (by any test module), hence here; likewise the fused encoder's compile backend.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The fused encoder layer compiles through aot_eager on the CPU: the same traced and differentiated
    # graph, without inductor's C++ kernels (a GPU run executes Triton ones; tests/test_fused_encoder.py
    # keeps one inductor case). Saves CI a C++ compile per graph.
    os.environ.setdefault("MDIST_FUSED_BACKEND", "aot_eager")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the SLURM tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """`slurm_cluster(nodes)`: a running SLURM cluster of that many nodes (tests/slurm_cluster.py), one of
    each size per session (started by the first test that asks, stopped at the session's end, also when a
    test failed). Without SLURM, root or network namespaces the test is skipped with the reason; in CI
    (CI set) it fails instead, since CI installs them (.ci/run)."""
    from slurm_cluster import LocalSlurm, SlurmUnavailable, missing_requirement

    clusters, reasons = {}, {}

    def cluster(nodes: int = 1):
        if nodes not in clusters and nodes not in reasons:
            reasons[nodes] = missing_requirement(nodes)
            if reasons[nodes] is None:
                clusters[nodes] = LocalSlurm(tmp_path_factory.mktemp(f"slurm{nodes}"), nodes)
                try:
                    clusters[nodes].start()
                except SlurmUnavailable as err:
                    clusters.pop(nodes).stop()
                    reasons[nodes] = f"local SLURM did not start: {err}"
        if reasons[nodes]:
            _unavailable(reasons[nodes])
        return clusters[nodes]

    try:
        yield cluster
    finally:
        for started in clusters.values():
            started.stop()


@pytest.fixture(scope="session")
def synthetic_docs():
    from mdist.data.synthetic import SyntheticCorpus

    corpus = SyntheticCorpus(seed=0)
    return {lang: corpus.monolingual(lang, documents=120) for lang in ("en", "tr")}


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, synthetic_docs) -> Path:
    """A tiny random XLM-R teacher directory (model + sentencepiece tokenizer)."""
    from mdist.config import TeacherConfig, TinyTeacherConfig
    from mdist.teacher import build_tiny_teacher

    cfg = TeacherConfig(tiny=TinyTeacherConfig(layers=4, hidden=32, heads=4, ffn=64, vocab=300, max_positions=66))
    out = tmp_path_factory.mktemp("teacher")
    return build_tiny_teacher(cfg, (d for docs in synthetic_docs.values() for d in docs), out, seed=0)


@pytest.fixture(scope="session")
def recipe_teacher_dir(tmp_path_factory) -> Path:
    """The `tiny` recipe's random teacher with dropout 0, so ranks and runs compute the same thing."""
    import json

    from mdist.config import load_run_config
    from mdist.run import training_documents
    from mdist.teacher import build_tiny_teacher

    cfg = load_run_config("tiny")
    path = tmp_path_factory.mktemp("recipe-teacher")
    build_tiny_teacher(cfg.teacher, (d for ds in training_documents(cfg).values() for d in ds), path, cfg.train.seed)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


DEMO_SIZE = dict(pretrain_steps=60, pairs=50, ner_train=240, ner_eval=60, ner_epochs=5, seeds=(0, 1))  # mdist.demo.DemoSize: enough to show the claim
DEMO_OVERRIDES = ["train.steps=3"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The embedded main job, shortened (DEMO_SIZE, distil 3 steps): a run directory named 'demo-run'
    with a teacher, students en/tr (and no-alignment/students), summary.json, an MLflow store and the
    demo's transfer runs."""
    from mdist.demo import DemoSize, run_demo

    out = tmp_path_factory.mktemp("demo-run", numbered=False)
    run_demo(out, DemoSize(**DEMO_SIZE), DEMO_OVERRIDES)
    return out
