"""`mdist.errors` is the one home of user-facing errors: a leaf, so raising one never makes an import circle."""
import ast
import subprocess
import sys
from pathlib import Path

import mdist.config
import mdist.errors
import mdist.teacher


def test_errors_module_imports_no_other_mdist_module():
    code = "import sys, mdist.errors; print(sorted(m for m in sys.modules if m.startswith('mdist')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['mdist', 'mdist.errors']"


def test_config_imports_no_data_module_even_inside_functions():
    tree = ast.parse(Path(mdist.config.__file__).read_text(encoding="utf-8"))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert "mdist.errors" in imported and not [name for name in imported if name.startswith("mdist.data")]


def test_config_and_teacher_raise_the_errors_module_classes():
    assert mdist.config.ConfigError is mdist.errors.ConfigError
    assert mdist.teacher.TeacherError is mdist.errors.TeacherError
    assert {mdist.errors.ConfigError, mdist.errors.TeacherError, mdist.errors.DataError, mdist.errors.NonFiniteLossError} <= set(mdist.errors.UserError)


class _RecordedStream:
    """A stand-in for stderr that keeps each write apart (a pipe shared by ranks sees the same writes)."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_an_error_line_reaches_stderr_in_one_write_with_its_newline(monkeypatch, tmp_path):
    """Ranks share one stderr under torchrun and srun; a line written in two parts (text, then newline)
    could be joined by another rank's line, as seen in CI with the two ranks' disk-full lines."""
    from mdist import cli

    stream = _RecordedStream()
    monkeypatch.setattr(sys, "stderr", stream)
    code = cli.main(["runs", "verify", str(tmp_path / "missing")])
    assert code == 2
    assert len(stream.writes) == 1 and stream.writes[0].startswith("mdist runs: error: ") and stream.writes[0].endswith("\n")
    assert stream.writes[0].count("\n") == 1
