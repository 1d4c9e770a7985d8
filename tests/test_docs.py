"""The user documentation (README.md, docs/, CONTRIBUTING.md) held to the code it describes.

Every `mdist` command line shown parses with the real command line, every run-config key is in
docs/configuration.md and every flag in docs/cli.md, every relative link and README anchor resolves, and
CI runs the README's own test command. Nothing here runs a command: the parsers and dataclasses are the
reference, as light to import as `mdist --help`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import typing
from pathlib import Path

import pytest

from mdist.cli import build_parser
from mdist.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, ROOT / "CONTRIBUTING.md", *DOCS]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _mdist_lines(text: str) -> list[str]:
    """The `mdist ...` command lines of the bash blocks in `text`, continuation lines joined; lines with a
    `...` placeholder are sketches, not commands."""
    found = []
    for block in _shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("mdist ") and "..." not in line and "…" not in line:
                found.append(line)
    return found


COMMANDS = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in _mdist_lines(page.read_text(encoding="utf-8"))]


def test_the_quick_start_shows_every_step_of_a_first_run():
    """The premise of the parsing test below: the README's quick start is made of real commands."""
    quick = README.read_text(encoding="utf-8").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    steps = [shlex.split(line)[1] for line in _mdist_lines(quick)]
    assert {"prep", "distill", "eval", "finetune", "transfer-table", "runs"} <= set(steps), steps


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=[f"{page}:{line[:60]}" for page, line in COMMANDS])
def test_every_mdist_command_shown_parses(page, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # output paths are checked for writability relative to here
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(shlex.split(line, comments=True)[1:])
        except SystemExit as exit:
            if exit.code:  # --help exits 0
                pytest.fail(f"{page}: `{line}` does not parse: {stderr.getvalue().strip()}")


def _config_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hints[field.name]):
            keys += _config_keys(hints[field.name], f"{key}.")
        else:
            keys.append(key)
    return keys


def test_every_config_key_is_in_the_configuration_reference():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    keys = _config_keys(RunConfig)
    assert "train.steps" in keys and "teacher.tiny.vocab" in keys  # the walk reaches nested sections
    missing = [key for key in keys if f"`{key}`" not in text]
    assert missing == [], f"docs/configuration.md does not describe: {missing}"


def _commands(parser: argparse.ArgumentParser, name: str = "mdist"):
    """(`mdist cmd [sub]`, parser) for every command that takes flags."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
    for sub in subs:
        for child, child_parser in sub.choices.items():
            yield from _commands(child_parser, f"{name} {child}")


def _section(text: str, command: str) -> str:
    """The part of docs/cli.md under the heading that names `command`, up to the next heading."""
    match = re.search(rf"^#+ `{re.escape(command)}`\n(.*?)(?=^#+ |\Z)", text, flags=re.S | re.M)
    return match.group(1) if match else ""


def test_every_flag_is_in_the_command_reference():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = []
    for command, parser in _commands(build_parser()):
        section = _section(text, command)
        flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        missing += [f"{command} {flag}" for flag in flags if f"`{flag}" not in section]
        if not section:
            missing.append(f"{command} (no section)")
    assert missing == [], f"docs/cli.md does not describe: {missing}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # a `# comment` is no heading
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert broken == [], f"{page.name}: links that lead nowhere: {broken}"


DEVELOPER_NOTES = re.compile(r"issue|#\d|gpu-wheels|gpu_acceptance|wheelhouse|\.whl\b", re.I)


@pytest.mark.parametrize("page", [README, *DOCS], ids=[p.relative_to(ROOT).as_posix() for p in [README, *DOCS]])
def test_user_docs_carry_no_developer_notes(page):
    """Issue numbers, the wheelhouse and the GPU acceptance script belong in CONTRIBUTING.md."""
    found = [line for line in page.read_text(encoding="utf-8").splitlines() if DEVELOPER_NOTES.search(line)]
    assert found == [], f"{page.name}: developer notes in the user's documentation: {found}"


def test_ci_runs_the_readmes_test_command():
    two_commands = README.read_text(encoding="utf-8").split("## The two commands", 1)[1]
    first_block = _shell_blocks(two_commands)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make demo", "make test"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert "make test" in ci
