"""Smoke check of the device's wheelhouse (`make gpu-wheels` -> .whl/): every package the production path needs
that the device lacks imports and does its part, from the wheels alone. The GPU acceptance script runs it first on
the device, after

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site

so a missing wheel shows up as one ImportError here, not minutes into a run. Checked: webdataset writes and reads a
tar shard; seqeval scores a tag sequence; bert_score imports; MLflow's client tracks a run into a fresh sqlite store
(experiment, run, log_batch, log_artifact, set_terminated, metric history); deepspeed imports and reads a config.
bert_score and deepspeed import torch: where torch is absent (a check off the device) they are reported as skipped.
Prints one line per check and exits non-zero on the first failure.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path


def check_webdataset(tmp: Path) -> str:
    """As mdist.data.prep writes a shard and mdist.data.shards reads it."""
    import tarfile

    import webdataset as wds

    shard = tmp / "en-000000.tar"
    with open(shard, "wb") as file:
        sink = wds.TarWriter(file, encoder=False, mtime=0, format=tarfile.USTAR_FORMAT)
        sink.write({"__key__": "doc0", "txt": b"hello world", "json": b'{"lang": "en"}'})
        sink.close()
    samples = list(wds.tarfile_to_samples()([{"url": str(shard)}]))
    assert [(s["__key__"], s["txt"], s["json"]) for s in samples] == [("doc0", b"hello world", b'{"lang": "en"}')], samples
    return f"webdataset {version('webdataset')}: wrote and read one shard"


def check_seqeval() -> str:
    from seqeval.metrics import f1_score, precision_score, recall_score

    truth, guess = [["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]]
    f1, p, r = f1_score(truth, guess), precision_score(truth, guess), recall_score(truth, guess)
    assert (round(p, 6), round(r, 6), round(f1, 6)) == (1.0, 0.5, round(2 / 3, 6)), (p, r, f1)
    return f"seqeval {version('seqeval')}: span F1 {f1:.3f}"


def check_mlflow(tmp: Path) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.create_experiment("gpu-wheels-check", artifact_location=(tmp / "mlartifacts").as_uri())
    run = client.create_run(exp, run_name="check")
    run_id, now = run.info.run_id, int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric("loss", 1.0 / (step + 1), now + step, step) for step in range(5)],
                     params=[Param("train.lr", "1e-4"), Param("student", "en")])
    artifact = tmp / "summary.json"
    artifact.write_text('{"ok": true}\n')
    client.log_artifact(run_id, str(artifact))
    client.set_terminated(run_id)
    history = [m.value for m in client.get_metric_history(run_id, "loss")]
    finished = client.get_run(run_id)
    assert history == [1.0 / (step + 1) for step in range(5)], history
    assert finished.data.params == {"train.lr": "1e-4", "student": "en"} and finished.info.status == "FINISHED", finished
    assert [f.path for f in client.list_artifacts(run_id)] == ["summary.json"]
    return f"mlflow-skinny {version('mlflow-skinny')}: sqlite store, run, log_batch, log_artifact, set_terminated, history of {len(history)}"


def check_bert_score() -> str:
    import bert_score  # noqa: F401

    return f"bert-score {version('bert-score')}: imported"


def check_deepspeed() -> str:
    import deepspeed  # noqa: F401
    from deepspeed.runtime.config import DeepSpeedConfig  # pydantic models, hjson
    from deepspeed.utils import groups  # noqa: F401 (mdist.engine)

    config = DeepSpeedConfig({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
                              "zero_optimization": {"stage": 2}})
    assert config.zero_optimization_stage == 2 and config.train_batch_size == 2
    return f"deepspeed {version('deepspeed')}: imported, ZeRO 2 config read"


def main() -> int:
    torch = importlib.util.find_spec("torch") is not None
    checks = [("webdataset", check_webdataset), ("seqeval", check_seqeval), ("mlflow", check_mlflow),
              ("bert_score", check_bert_score if torch else None), ("deepspeed", check_deepspeed if torch else None)]
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-check-") as tmp:
        for name, check in checks:
            if check is None:
                print(f"skipped {name}: no torch in this interpreter (checked on the device)")
                continue
            try:
                args = (Path(tmp) / name,) if "tmp" in check.__code__.co_varnames[: check.__code__.co_argcount] else ()
                for path in args:
                    path.mkdir()
                print(f"ok {check(*args)}", flush=True)
            except Exception as err:
                print(f"FAILED {name}: {type(err).__name__}: {err}", flush=True)
                return 1
    print(f"gpu wheels: every check passed (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
