"""constraints.txt is the tested set: an exact version for every package that installing mdist[test] brings in, so a
clone installs next month what CI passed with today (`make setup` installs with it; `make constraints` rewrites it)."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate(CONSTRAINTS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.!]+)", line.strip())
        assert match, f"{CONSTRAINTS}:{number}: not an exact pin without a local label: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{CONSTRAINTS}:{number}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


def _requirement_closure(root: str, extras: tuple[str, ...]) -> set[str]:
    """The installed distributions that `root[extras]` needs, directly or through others (markers evaluated here)."""
    needed, todo = set(), [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            key = canonicalize_name(requirement.name)
            if key not in needed:
                needed.add(key)
                todo.append((requirement.name, tuple(requirement.extras)))
    return needed


def test_every_package_mdist_test_installs_is_pinned_exactly():
    missing = sorted(_requirement_closure("mdist", ("test",)) - set(_pins()))
    assert missing == [], f"not pinned in {CONSTRAINTS.name} (refresh it with `make constraints`): {missing}"


def test_the_build_and_install_tools_are_pinned():
    """pip and setuptools build mdist (`make setup` builds without isolation): pinned too, and torch at the README's pin."""
    pins = _pins()
    assert {"pip", "setuptools", "torch"} <= set(pins)
    assert pins["torch"] == "2.13.0"
