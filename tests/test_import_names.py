"""No file of the repository stands in for an installed module in the processes the README's commands start.

`python -m ...` and `python -c ...` put the current directory first on sys.path, so every command run from the
repository root finds `kernels/` there, which is `mdist.kernels` only: the top-level `kernels` is Hugging Face's, and
transformers imports it whenever it is installed. These tests start processes from the root as a user's shell does
and check which `kernels` they get. `python benchmarks/X.py` puts benchmarks/ first and pytest puts tests/ first:
no script there may be named as an installed module is.
"""
from __future__ import annotations

import os
import subprocess
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from textwrap import dedent

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN_KERNELS = ROOT / "kernels" / "__init__.py"


def _run_from_root(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_root_is_on_sys_path_in_processes_started_from_it():
    """The premise: were the root not on the path, the tests below would pass without the guard."""
    proc = _run_from_root("-c", "import os, sys; print(os.getcwd() in [os.path.abspath(p or os.curdir) for p in sys.path])")
    assert proc.stdout.strip() == "True", proc.stderr


def test_python_dash_m_mdist_from_the_root_works():
    proc = _run_from_root("-m", "mdist", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distill" in proc.stdout


def test_transformers_modelling_code_gets_hugging_faces_kernels_and_mdist_gets_its_own():
    proc = _run_from_root("-c", dedent("""
        import sys
        import transformers.integrations.hub_kernels
        from transformers import XLMRobertaForMaskedLM
        import mdist.kernels
        print(mdist.kernels.__file__)
        print(getattr(sys.modules.get('kernels'), '__file__', None))
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]
    own, top = proc.stdout.split()
    assert Path(own) == OWN_KERNELS
    assert top == "None" or Path(top) != OWN_KERNELS


def test_import_kernels_from_the_root_is_hugging_faces_or_missing():
    proc = _run_from_root("-c", "import kernels; print(kernels.__file__)")
    if proc.returncode == 0:
        assert Path(proc.stdout.strip()) != OWN_KERNELS
        assert "site-packages" in proc.stdout
    else:
        assert "ModuleNotFoundError: No module named 'kernels'" in proc.stderr, proc.stderr[-2000:]


def test_without_hugging_faces_kernels_the_import_fails_as_a_missing_module():
    """Site-packages taken off the path stands in for an environment without Hugging Face's `kernels`."""
    proc = _run_from_root("-c", dedent("""
        import sys
        sys.path[:] = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]
        try:
            import kernels
        except ModuleNotFoundError as error:
            print('missing', error.name)
        else:
            print('found', kernels.__file__)
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["missing", "kernels"]


@pytest.mark.parametrize("folder", ["benchmarks", "tests"])
def test_no_script_is_named_as_an_installed_module(folder):
    """benchmarks/kernels.py once made every benchmark that imports transformers fail this way."""
    elsewhere = [p for p in sys.path if Path(p or os.curdir).resolve() not in (ROOT, ROOT / folder)]
    shadowing = [
        path.name for path in sorted((ROOT / folder).iterdir())
        if path.suffix == ".py" or (path / "__init__.py").exists()
        if PathFinder.find_spec(path.stem, elsewhere) is not None or path.stem in sys.builtin_module_names
    ]
    assert shadowing == [], f"{folder}/ holds modules named as installed ones: {shadowing}"
