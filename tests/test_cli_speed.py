"""`mdist --help`, `mdist <command> --help` and argument errors answer at once: parsers are defined from light
modules only, and each command imports torch, transformers, DeepSpeed... in its `run` function.

The strict check is which modules a fresh process holds after `main([...])` returns; the wall-time check is
the user's view of it, best of three runs so that a loaded machine does not fail it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdist.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "deepspeed", "mlflow", "webdataset", "bert_score", "sentencepiece", "numpy",
         "triton", "pandas", "matplotlib", "seqeval")
HELP_SECONDS = 1.0  # the bound; today's figure is ~0.1-0.3 s, importing torch alone takes several seconds

PROBE = f"""
import json, sys
from mdist.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _env() -> dict[str, str]:
    """This checkout first on the path, whatever mdist is installed."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _probe(argv: list[str]) -> tuple[dict, str, str]:
    """Run `mdist.cli.main(argv)` in a fresh process: (exit code and heavy modules loaded, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    *output, last = done.stdout.splitlines() or [""]
    assert last.startswith("{"), f"the probe did not finish: {done.stderr[-2000:]}"
    return json.loads(last), "\n".join(output), done.stderr


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command word sequence the parser accepts: subcommands, nested ones, and the choices of a
    subcommand's first positional argument (`runs sync`)."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths += [path + (name,)] + command_paths(child, path + (name,))
            return paths
    first = next((a for a in parser._actions if not a.option_strings), None)
    if path and first is not None and first.choices:
        paths += [path + (choice,) for choice in first.choices]
    return paths


COMMANDS = command_paths(build_parser())


def test_commands_are_discovered_from_the_parser():
    """The premise of the tests below: nested commands and positional actions are found too."""
    assert {("distill",), ("eval",), ("eval", "retrieval"), ("runs", "sync"), ("finetune",)} <= set(COMMANDS)


@pytest.mark.parametrize("argv", [[]] + [list(path) for path in COMMANDS], ids=lambda argv: " ".join(argv) or "mdist")
def test_help_loads_no_heavy_module_and_writes_no_stderr(argv):
    result, stdout, stderr = _probe(argv + ["--help"])
    assert result == {"code": 0, "heavy": []}
    assert stdout.startswith("usage: mdist"), stdout[:500]
    assert stderr == ""


@pytest.mark.parametrize("argv, message", [
    (["distill", "--out", "x"], "the following arguments are required: --recipe"),
    (["finetune", "--task", "nope"], "argument --task: invalid choice: 'nope'"),
    (["eval", "retrieval", "--batch-size", "0", "--src-file", "a", "--trg-file", "b", "--out", "r.json"], "argument --batch-size: must be >= 1, got 0"),
    (["baseline", "--init", "last"], "argument --init: invalid choice: 'last'"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
])
def test_an_argument_error_exits_2_with_argparse_line_and_loads_no_heavy_module(argv, message):
    result, _, stderr = _probe(argv)
    assert result == {"code": 2, "heavy": []}
    assert message in stderr and stderr.startswith("usage: mdist")


def test_python_dash_m_mdist_help_answers_within_a_second():
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mdist", "--help"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
        seconds.append(time.perf_counter() - start)
        assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert min(seconds) < HELP_SECONDS, f"mdist --help took {min(seconds):.2f} s at best of {', '.join(f'{s:.2f}' for s in seconds)}"


def test_runs_verify_loads_no_deepspeed_and_prints_no_banner(tmp_path):
    """A command that does not train stays clear of DeepSpeed, whose import writes 'Setting accelerator to CPU'."""
    (tmp_path / "checkpoints" / "step1").mkdir(parents=True)  # incomplete: nothing to hash
    result, stdout, stderr = _probe(["runs", "verify", str(tmp_path)])
    assert result["code"] == 0 and "deepspeed" not in result["heavy"], result
    assert "--resume would start from step 0" in stdout and stderr == ""
