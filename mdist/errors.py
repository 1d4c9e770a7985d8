"""Errors that reach the user as one clear line (no traceback).

A leaf: it imports nothing of mdist, so any module can raise these without an import circle.
"""


class ConfigError(ValueError):
    """A bad run configuration; the message names the key or path."""


class TeacherError(ValueError):
    """The teacher directory is missing, corrupt, not XLM-R-family, or its tokenizer does not fit it."""


class DataError(ValueError):
    """Bad training or evaluation data; the message names the file (and line where known)."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; the message names step, student and term."""


class RunDirError(ValueError):
    """The output directory holds an earlier run that this command would overwrite; names it."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or unreadable; the message names the file and what to do."""


class DistributedError(RuntimeError):
    """The ranks did not meet within `dist.timeout_s`; the message names the rank(s) or the barrier waited for."""


UserError = (ConfigError, TeacherError, DataError, NonFiniteLossError, RunDirError, CheckpointError, DistributedError, FileNotFoundError)
