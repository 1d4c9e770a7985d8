"""`mdist runs`: a table of distillation runs (terminal and Markdown), loss plots, a sweep's children compared
(`--parent RUN_ID` / `--sweep DIR`, with scaling plots), `mdist runs sync RUN_DIR`,
and `mdist runs verify RUN_DIR` (its checkpoints' files against the sizes and hashes in their `COMPLETE`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from mdist.errors import ConfigError, TrackingUnreachableError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("runs", help="compare distillation runs from a tracking store; 'runs sync RUN_DIR' sends waiting records; "
                            "'runs verify RUN_DIR' checks its checkpoints")
    parser.add_argument("action", nargs="?", choices=["list", "sync", "verify"], default="list", help="list (default), sync or verify")
    parser.add_argument("run_dir", nargs="?", type=Path, help="sync: the run directory whose waiting MLflow records are sent; "
                        "verify: the run directory whose checkpoints are checked (exit 1 when a file is missing, resized or its bytes changed)")
    parser.add_argument("--store", type=Path, metavar="RUN_DIR", help="the embedded store of a run directory (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--tracking-uri", help="a tracking server or store URI (overrides MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", action="append", help="only runs of this experiment (repeatable)")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only runs with this tag value (repeatable)")
    parser.add_argument("--parent", metavar="RUN_ID", help="compare the child runs of this sweep's parent run (grid values, student parameters, "
                        "tokens/s, peak memory, final loss, held-out perplexity)")
    parser.add_argument("--sweep", type=Path, metavar="DIR", help="the same for the sweep directory DIR (its store and parent run)")
    parser.add_argument("--out", type=Path, help="also write the table as Markdown to this file")
    parser.add_argument("--plot", type=Path, help="draw the loss curves of the listed runs into this PNG; with --parent or --sweep: "
                        "final loss, held-out perplexity and tokens/s against student parameters")
    parser.add_argument("--metric", default=r"/loss$", help="regular expression of the metrics --plot draws (default: each pair's total loss)")
    parser.set_defaults(run=run)


def _uri(args: argparse.Namespace) -> str:
    from mdist.tracking import tracking_uri

    if args.tracking_uri:
        return args.tracking_uri
    if args.sweep is not None and args.store is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        args.store = args.sweep  # the sweep's embedded store
    if args.store is not None:
        if not (args.store / "mlflow.db").is_file():
            raise FileNotFoundError(f"'{args.store / 'mlflow.db'}' does not exist (is '{args.store}' a run directory?)")
        return f"sqlite:///{(args.store / 'mlflow.db').resolve()}"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return tracking_uri(Path("."))
    raise ConfigError("runs: give --store RUN_DIR or --tracking-uri URI (or set MLFLOW_TRACKING_URI)")


def run(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return verify(args.run_dir)
    from mdist.tracking import client_for
    from mdist.tracking.runs import markdown, plot_losses, plot_sweep, runs_table, sweep_markdown, sweep_rows, sync
    from mdist.tracking.sender import unreachable

    if args.action == "sync":
        if args.run_dir is None or not args.run_dir.is_dir():
            raise FileNotFoundError(f"runs sync: '{args.run_dir}' is not a run directory")
        sent = sync(args.run_dir, args.tracking_uri)
        for path, count, run_id in sent:
            print(f"{path.name}: sent {count} record(s) to run {run_id}")
        if not sent:
            print(f"nothing waits in {args.run_dir}")
        return 0
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--tag expects KEY=VALUE, got '{item}'")
        tags[key] = value
    if args.sweep is not None:
        from mdist.sweep import read_sweep

        args.parent = read_sweep(args.sweep)["parent_run_id"]
    uri = _uri(args)
    client = client_for(uri)
    try:
        if args.parent:
            grid, rows = sweep_rows(client, args.parent)
            text = sweep_markdown(grid, rows)
        else:
            rows = runs_table(client, args.experiment, tags)
            text = markdown(rows)
    except Exception as err:
        if not unreachable(err):
            raise
        raise TrackingUnreachableError(f"the tracking server {uri} is unreachable") from None
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    if args.plot and args.parent:
        print(f"wrote {args.plot} ({plot_sweep(grid, rows, args.plot)} series)")
    elif args.plot:
        curves = plot_losses(client, [row["run_id"] for row in rows], args.metric, args.plot)
        print(f"wrote {args.plot} ({curves} curves)")
    return 0


def verify(run_dir: Path | None) -> int:
    """Check every complete checkpoint of a run directory (or of a checkpoints directory) as `--resume`
    would, without training: 0 when all verify, 1 when one does not."""
    from mdist.checkpoint_files import verify_checkpoints  # not mdist.checkpoint: that loads DeepSpeed (and its banner)

    if run_dir is None or not run_dir.is_dir():
        raise FileNotFoundError(f"runs verify: '{run_dir}' is not a run directory")
    directory = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    if not any(directory.glob("step*")):
        raise FileNotFoundError(f"runs verify: '{run_dir}' holds no checkpoints (no checkpoints/step*)")
    lines, ok = verify_checkpoints(directory)
    print("\n".join(lines))
    return 0 if ok else 1
