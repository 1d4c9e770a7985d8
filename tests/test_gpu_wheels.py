"""benchmarks/gpu_wheels.txt, the packages `make gpu-wheels` carries to the lent GPU machine: each at constraints.txt's
pin (or with a reason), none twice, none the device already has, and its closure whole: every need (Requires-Dist) of
a listed package is listed, on the device, or marked unused. No network: the metadata is this environment's."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "benchmarks" / "gpu_wheels.txt"
CONSTRAINTS = ROOT / "constraints.txt"
# The device's Python, for the markers of a Requires-Dist.
DEVICE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
              "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


@dataclass(frozen=True)
class Entry:
    line: int
    name: str  # canonical
    version: str | None  # None: constraints.txt's pin
    how: str  # "wheel" or "sdist"
    build: tuple[str, ...]  # an sdist's build requirements, NAME==VERSION
    reason: str


@dataclass(frozen=True)
class WheelList:
    entries: list[Entry]
    device: dict[str, int]  # name -> line of its `# device:` mention
    unused: dict[str, str]  # name -> why


def _read() -> WheelList:
    entries, device, unused = [], {}, {}
    for number, line in enumerate(LIST.read_text(encoding="utf-8").splitlines(), 1):
        code, _, comment = line.partition("#")
        if not code.strip():
            kind, _, rest = comment.strip().partition(":")
            if kind == "device":
                for name in rest.split():
                    assert canonicalize_name(name) not in device, f"{LIST.name}:{number}: {name} twice on the device lines"
                    device[canonicalize_name(name)] = number
            elif kind == "unused":
                name, _, why = rest.strip().partition(" ")
                assert why.strip(), f"{LIST.name}:{number}: `# unused: {name}` without the reason"
                assert canonicalize_name(name) not in unused, f"{LIST.name}:{number}: {name} twice on the unused lines"
                unused[canonicalize_name(name)] = why.strip()
            continue
        fields = code.split()
        spec, how, build = fields[0], (fields[1:2] or ["wheel"])[0], fields[2:]
        assert how in ("wheel", "sdist"), f"{LIST.name}:{number}: `{how}` after the name: only `sdist` (and its build requirements)"
        name, _, version = spec.partition("==")
        entries.append(Entry(number, canonicalize_name(name), version or None, how, tuple(build), comment.strip()))
    return WheelList(entries, device, unused)


def _pins() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in
            re.findall(r"(?m)^([A-Za-z0-9._-]+)==(\S+)$", CONSTRAINTS.read_text(encoding="utf-8"))}


def _version(entry: Entry) -> str:
    return entry.version or _pins()[entry.name]


def test_every_package_has_its_version_from_constraints_or_a_reason():
    pins, wheels = _pins(), _read()
    assert len(wheels.entries) > 10
    for entry in wheels.entries:
        where = f"{LIST.name}:{entry.line}: {entry.name}"
        if entry.version is None:
            assert entry.name in pins, f"{where}: no pin in constraints.txt (pin it there, or write NAME==VERSION and why)"
        else:
            assert entry.name not in pins, f"{where}=={entry.version}: constraints.txt pins it ({pins.get(entry.name)}): drop the version"
        assert entry.reason, f"{where}: say after '#' what imports it"
        for requirement in entry.build:
            assert entry.how == "sdist" and re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.!+]+", requirement), \
                f"{where}: build requirement {requirement!r}: only after `sdist`, as NAME==VERSION"


def test_no_package_twice_and_none_the_device_has():
    wheels = _read()
    names = [entry.name for entry in wheels.entries]
    assert sorted({name for name in names if names.count(name) > 1}) == [], "listed twice"
    listed = set(names)
    assert sorted(listed & set(wheels.device)) == [], "listed, yet on a `# device:` line: the device has it"
    assert sorted(listed & set(wheels.unused)) == [], "listed, yet marked unused"
    assert sorted(set(wheels.device) & set(wheels.unused)) == [], "on the device and marked unused: one or the other"
    assert "mlflow" not in listed, "the full mlflow (UI, server) is not carried: mlflow-skinny and the sqlite store's needs are"


def test_the_closure_is_whole():
    """Each need of a listed package (this environment's metadata, markers for the device's Python 3.12, no extras) is
    listed, on a `# device:` line or on an `# unused:` line; and each of those lines names a real need."""
    wheels = _read()
    listed = {entry.name for entry in wheels.entries}
    needs: dict[str, set[str]] = {}
    checked = 0
    for entry in wheels.entries:
        try:
            installed = metadata.version(entry.name)
        except metadata.PackageNotFoundError:
            continue
        if installed != _version(entry):
            continue  # another version's metadata says nothing of the pinned one
        checked += 1
        for text in metadata.requires(entry.name) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(DEVICE_ENV):
                continue
            needs.setdefault(canonicalize_name(requirement.name), set()).add(entry.name)
    if checked == 0:
        pytest.skip("none of the listed packages is installed here at its pin (`make setup` installs them)")
    missing = {name: sorted(by) for name, by in needs.items() if name not in listed | set(wheels.device) | set(wheels.unused)}
    assert missing == {}, f"needed (by) yet neither listed, nor on the device, nor marked unused in {LIST.name}"
    if checked == len(wheels.entries):  # every listed package's metadata seen: no stale device or unused names
        assert sorted(set(wheels.device) - set(needs)) == [], "on a `# device:` line, yet no listed package needs it"
        assert sorted(set(wheels.unused) - set(needs)) == [], "marked unused, yet no listed package needs it"


def test_the_script_fetches_what_the_list_says():
    """benchmarks/gpu_wheels.sh reads the list in shell: the same names and versions (constraints.txt's case and
    spelling aside), without the network."""
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_wheels.sh"), "--list"], capture_output=True, text=True, check=True).stdout
    wheels = _read()
    assert [canonicalize_name(line.partition("==")[0]) + "==" + line.partition("==")[2] for line in out.split()] == \
        [f"{entry.name}=={_version(entry)}" for entry in wheels.entries]


def test_make_gpu_wheels_runs_the_script():
    out = subprocess.run(["make", "-n", "gpu-wheels", "WHEELS=somewhere"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "benchmarks/gpu_wheels.sh somewhere" in out


def test_the_script_fails_on_a_package_without_a_pin(tmp_path):
    """A name constraints.txt does not pin stops the target with one line naming it (before any download)."""
    copy = tmp_path / "repo"
    (copy / "benchmarks").mkdir(parents=True)
    (copy / "benchmarks" / "gpu_wheels.sh").write_text((ROOT / "benchmarks" / "gpu_wheels.sh").read_text())
    (copy / "benchmarks" / "gpu_wheels.txt").write_text("hjson  # deepspeed\nno-such-package  # nothing\n")
    (copy / "constraints.txt").write_text("hjson==3.1.0\n")
    run = subprocess.run(["bash", str(copy / "benchmarks" / "gpu_wheels.sh"), str(tmp_path / "wheels")], capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == ["gpu-wheels: no-such-package: no pin in constraints.txt "
                                              "(pin it there, or write NAME==VERSION with the reason in benchmarks/gpu_wheels.txt)"]
    assert not (tmp_path / "wheels").exists()


@pytest.mark.timeout(300)
def test_the_smoke_check_passes_where_everything_is_installed():
    """The device's first step, here with the whole environment installed (torch too): the check itself works."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_wheels_check.py")], capture_output=True, text=True,
                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert [line.split()[1] for line in run.stdout.splitlines() if line.startswith("ok ")] == \
        ["webdataset", "seqeval", "mlflow-skinny", "bert-score", "deepspeed"]
