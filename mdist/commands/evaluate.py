"""`mdist eval retrieval | perplexity | plot`: alignment retrieval per layer (METHOD §7) and MLM pseudo-perplexity.

Models come either as directories (`--src-model/--trg-model`, `--model`) or from a distillation run
(`--students RUN_DIR --lang xx`); a run's results are logged to its own MLflow run.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from mdist.argtypes import add_device_option, at_least, chosen_device, output_file
from mdist.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate students or teachers: retrieval per layer, pseudo-perplexity, plots")
    evaluations = parser.add_subparsers(dest="evaluation", required=True)

    retrieval = evaluations.add_parser("retrieval", help="Tatoeba-style nearest-neighbour retrieval, cosine and BERTScore per layer")
    retrieval.add_argument("--src-model", type=Path, help="model directory that encodes the queries (--src-file)")
    retrieval.add_argument("--trg-model", type=Path, help="model directory that encodes the English candidates (--trg-file)")
    retrieval.add_argument("--src-file", type=Path, required=True, help="queries, one sentence per line (e.g. tatoeba.tur-eng.tur)")
    retrieval.add_argument("--trg-file", type=Path, required=True, help="candidates, line i translates line i of --src-file")
    retrieval.add_argument("--limit", type=at_least(1), help="use only the first LIMIT pairs")
    retrieval.add_argument("--plot", type=Path, help="also write a PNG with per-layer curves")
    retrieval.add_argument("--label", help="name of this model pair in the plot and in MLflow metric names")
    retrieval.set_defaults(run=run_retrieval)
    _common(retrieval, batch_size=32)

    perplexity = evaluations.add_parser("perplexity", help="MLM pseudo-perplexity on text files or webdataset shards")
    perplexity.add_argument("--model", type=Path, help="masked-LM model directory")
    perplexity.add_argument("--files", type=Path, nargs="+", required=True, help="text files (one sentence/document per line) or .tar shards with 'txt' members")
    perplexity.add_argument("--seed", type=at_least(0, high=2**32 - 1), default=0, help="seed of the masking")
    perplexity.set_defaults(run=run_perplexity)
    _common(perplexity, batch_size=16)

    plot = evaluations.add_parser("plot", help="merge retrieval result JSONs into one per-layer figure")
    plot.add_argument("results", type=Path, nargs="+", help="JSON files written by 'mdist eval retrieval'")
    plot.add_argument("--labels", nargs="+", help="legend names, one per result (default: file names)")
    plot.add_argument("--out", type=output_file, required=True, help="PNG to write")
    plot.set_defaults(run=run_plot)


def _common(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--students", type=Path, metavar="RUN_DIR", help="a distillation run: take the models from its students and log to its MLflow run")
    parser.add_argument("--lang", help="with --students: the language whose student is evaluated (queries for retrieval)")
    parser.add_argument("--candidate-lang", default="en", help="with --students: language of the candidate student (default: en)")
    parser.add_argument("--out", type=output_file, required=True, help="JSON file to write")
    parser.add_argument("--batch-size", type=at_least(1, high=65536), default=batch_size)
    parser.add_argument("--max-length", type=at_least(3), default=512, help="longest input in tokens (model limit applies too)")
    add_device_option(parser)
    parser.add_argument("--mlflow-run-dir", type=Path, help="log to the MLflow store of this run directory (or MLFLOW_TRACKING_URI)")
    parser.add_argument("--mlflow-run-id", help="existing MLflow run to log to (default: a new run; with --students a child of the distillation run)")


def run_retrieval(args: argparse.Namespace) -> int:
    from mdist.evaluation.plot import plot_layer_curves
    from mdist.evaluation.retrieval import SCORES, evaluate_retrieval

    run = _student_run(args)
    if run is not None:
        src_model, trg_model = run.student_dir(args.lang), run.student_dir(args.candidate_lang)
    elif args.src_model and args.trg_model:
        src_model, trg_model = args.src_model, args.trg_model
    else:
        raise ConfigError("eval retrieval: give --src-model and --trg-model, or --students RUN_DIR and --lang")
    label = args.label or args.lang or src_model.name
    result = evaluate_retrieval(src_model, trg_model, args.src_file, args.trg_file, args.batch_size, args.max_length, chosen_device(args.device), args.limit, progress=True)
    _write_json(args.out, result)
    if args.plot:
        plot_layer_curves({label: result}, args.plot)
    for score in SCORES:
        print(f"{score:>9}: " + "  ".join(f"{name}={acc:.3f}" for name, acc in result[score].items()))
    metrics = {f"retrieval.{_key(label)}.{score}.{name}": acc for score in SCORES for name, acc in result[score].items()}
    _log(args, run, metrics, [args.out] + ([args.plot] if args.plot else []))
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    from mdist.evaluation.perplexity import evaluate_perplexity

    run = _student_run(args)
    if run is not None:
        model = run.student_dir(args.lang)
    elif args.model:
        model = args.model
    else:
        raise ConfigError("eval perplexity: give --model, or --students RUN_DIR and --lang")
    result = evaluate_perplexity(model, args.files, args.seed, args.batch_size, args.max_length, chosen_device(args.device))
    if args.lang:
        result["lang"] = args.lang
    _write_json(args.out, result)
    print(f"pseudo-perplexity {result['pseudo_perplexity']:.3f} (loss {result['loss']:.4f} over {result['masked_tokens']} masked tokens)")
    label = _key(args.lang or model.name)
    _log(args, run, {f"perplexity.{label}": result["pseudo_perplexity"], f"perplexity.{label}.loss": result["loss"]}, [args.out])
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from mdist.evaluation.plot import load_results, plot_layer_curves

    plot_layer_curves(load_results(args.results, args.labels), args.out)
    print(f"wrote {args.out}")
    return 0


def _student_run(args: argparse.Namespace):
    """The distillation run named by --students, or None; --students needs --lang."""
    from mdist.evaluation.runs import StudentRun

    if args.students is None:
        return None
    if not args.lang:
        raise ConfigError("--students needs --lang (the language whose student is evaluated)")
    return StudentRun.load(args.students)


def _log(args: argparse.Namespace, run, metrics: dict[str, float], artifacts: list[Path]) -> None:
    """Log to the run given by --mlflow-run-id (in --mlflow-run-dir's store), else to a new run: with
    --students a child of the distillation run (the MLflow UI shows it under that run)."""
    from mdist.tracking import Tracker

    run_dir = args.mlflow_run_dir or (run.run_dir if run else None)
    if run_dir is None:
        return
    parent = run.mlflow_run_id if run and not args.mlflow_run_dir and not args.mlflow_run_id else None
    tracker = Tracker(run_dir, experiment="mdist-eval", run_id=args.mlflow_run_id, run_name=f"eval {args.evaluation}", parent_run_id=parent)
    tracker.log_metrics(metrics, step=0)
    for path in artifacts:
        tracker.log_artifact(path)
    tracker.close(status=None if args.mlflow_run_id else "FINISHED")  # someone else's run stays as its owner left it


def _key(label: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and spaces."""
    return re.sub(r"[^\w\-/ ]", "_", label)


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
