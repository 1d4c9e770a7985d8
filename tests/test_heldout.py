"""Held-out pseudo-perplexity during training (issue 16, item 4; the thesis's figure 4.4).

One tiny run with `train.eval_every` and one without: the logged values are those of `mdist eval
perplexity` on the exported students (same masking seed), MLflow holds every evaluated step, a resumed
run keeps the history, the exported students are byte-identical with and without held-out evaluation
(the teacher has dropout, so a stray draw from the global RNG or a student left in eval mode would
show), and bad config values stop with one line.
"""
from __future__ import annotations

import json
import shutil

import pytest

from mdist.cli import main
from mdist.config import load_run_config
from mdist.data.synthetic import SyntheticCorpus
from mdist.run import run_distillation

STEPS, EVERY = 3, 2
EVALUATED = [0, 2, 3]  # step 0 (the initialised students), every EVERY steps, the last step
PAIRS = ("en/en", "tr/tr")


@pytest.fixture(scope="module")
def heldout_files(tmp_path_factory) -> dict:
    corpus = SyntheticCorpus(seed=7)  # other sentences than the training corpus (seed 0)
    root = tmp_path_factory.mktemp("heldout")
    files = {}
    for lang in ("en", "tr"):
        files[lang] = root / f"{lang}.txt"
        files[lang].write_text("\n".join(corpus.monolingual(lang, documents=12)) + "\n", encoding="utf-8")
    return files


def heldout_set(files: dict) -> str:
    return "data.heldout={" + ", ".join(f"{lang}: ['{path}']" for lang, path in files.items()) + "}"


@pytest.fixture(scope="module")
def runs(tiny_teacher_dir, heldout_files, tmp_path_factory):
    assert json.loads((tiny_teacher_dir / "config.json").read_text())["hidden_dropout_prob"] > 0
    base = [f"teacher.path={tiny_teacher_dir}", f"train.steps={STEPS}"]
    plain = tmp_path_factory.mktemp("plain")
    run_distillation(load_run_config("tiny", base + ["tracking.enabled=false"]), plain)
    evaluated = tmp_path_factory.mktemp("evaluated")
    summary = run_distillation(load_run_config("tiny", base + [f"train.eval_every={EVERY}", heldout_set(heldout_files)]), evaluated)
    return plain, evaluated, summary


def test_training_is_unchanged_by_heldout_evaluation(runs):
    plain, evaluated, _ = runs
    for name in ("en", "tr"):
        a = (plain / "students" / name / "model.safetensors").read_bytes()
        b = (evaluated / "students" / name / "model.safetensors").read_bytes()
        assert a == b, f"student {name} differs when held-out evaluation runs"
    assert "heldout" not in json.loads((plain / "summary.json").read_text())


def test_summary_history_and_last_value_equal_mdist_eval_perplexity(runs, heldout_files, tmp_path):
    _, evaluated, summary = runs
    written = json.loads((evaluated / "summary.json").read_text())["heldout"]
    assert written == summary["heldout"] and sorted(written) == sorted(PAIRS)
    for pair, points in written.items():
        assert [p["step"] for p in points] == EVALUATED
        assert len({p["ppl"] for p in points}) == len(points) and points[-1]["ppl"] < points[0]["ppl"]  # training moves it
        lang = pair.split("/")[1]
        out = tmp_path / f"{lang}.json"
        # independent computation: the exported student, reloaded from disk, scored by the CLI with its default seed
        assert main(["eval", "perplexity", "--model", str(evaluated / "students" / pair.split("/")[0]),
                     "--files", str(heldout_files[lang]), "--batch-size", "3", "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert points[-1]["ppl"] == pytest.approx(result["pseudo_perplexity"], rel=1e-5)
        assert points[-1]["loss"] == pytest.approx(result["loss"], rel=1e-5)


def test_mlflow_metric_history_has_every_evaluated_step(runs):
    from mlflow.tracking import MlflowClient

    _, evaluated, summary = runs
    client = MlflowClient(tracking_uri=f"sqlite:///{evaluated / 'mlflow.db'}")
    for pair in PAIRS:
        for metric, field in (("ppl", "ppl"), ("loss", "loss")):
            history = sorted(client.get_metric_history(summary["mlflow_run_id"], f"heldout/{pair}/{metric}"), key=lambda m: m.step)
            assert [m.step for m in history] == EVALUATED
            assert [m.value for m in history] == pytest.approx([p[field] for p in summary["heldout"][pair]], rel=1e-12)


def test_resumed_run_keeps_the_history(runs, tiny_teacher_dir, heldout_files, tmp_path):
    """The final checkpoint carries the history; one more step appends one point."""
    _, evaluated, summary = runs
    shutil.copytree(evaluated / "checkpoints", tmp_path / "checkpoints")
    sets = [f"teacher.path={tiny_teacher_dir}", f"train.steps={STEPS + 1}", f"train.eval_every={EVERY}", heldout_set(heldout_files), "tracking.enabled=false"]
    resumed = run_distillation(load_run_config("tiny", sets), tmp_path, resume=True)
    for pair in PAIRS:
        assert resumed["heldout"][pair][:-1] == summary["heldout"][pair]
        assert resumed["heldout"][pair][-1]["step"] == STEPS + 1


BAD = [  # (--set values from (held-out files, a missing path), message)
    (lambda f, m: ["train.eval_every=2"], "config key 'train.eval_every' needs held-out text: set data.heldout"),
    (lambda f, m: [heldout_set(f)], "config key 'data.heldout' is set but train.eval_every is 0 (off)"),
    (lambda f, m: [heldout_set(f), "train.eval_every=-1"], "config key 'train.eval_every' must be >= 0, got -1"),
    (lambda f, m: [heldout_set(f), "train.eval_every=true"], "config key 'train.eval_every' must be of type int"),
    (lambda f, m: ["train.eval_every=2", f"data.heldout={{de: ['{f['en']}']}}"],
     "config key 'data.heldout.de': 'de' is not a language of this run (languages: en, tr)"),
    (lambda f, m: ["train.eval_every=2", f"data.heldout={{en: ['{m}']}}"], "config key 'data.heldout.en': file '{missing}' does not exist"),
    (lambda f, m: ["train.eval_every=2", "data.heldout={en: []}"], "config key 'data.heldout.en' lists no file"),
    (lambda f, m: ["train.eval_every=2", f"data.heldout={{en: '{f['en']}'}}"], "config key 'data.heldout.en' must be a list"),
]


@pytest.mark.parametrize("sets, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_config_values_stop_with_one_line(sets, message, heldout_files, tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    args = ["distill", "--recipe", "tiny", "--out", str(tmp_path / "out")]
    for value in sets(heldout_files, missing):
        args += ["--set", value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert message.format(missing=missing) in err
    assert not (tmp_path / "out").exists()  # stopped before anything was built or written


def test_empty_heldout_file_stops_with_its_name(tiny_teacher_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    rc = main(["distill", "--recipe", "tiny", "--out", str(tmp_path / "out"), "--set", f"teacher.path={tiny_teacher_dir}",
               "--set", "train.eval_every=2", "--set", f"data.heldout={{tr: ['{empty}']}}", "--set", "tracking.enabled=false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and f"{empty}: no text" in err
