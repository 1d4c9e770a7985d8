"""Errors that reach the user as one clear line (no traceback)."""
from mdist.config import ConfigError
from mdist.teacher import TeacherError


class DataError(ValueError):
    """Bad training or evaluation data; the message names the file (and line where known)."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; the message names step, student and term."""


class RunDirError(ValueError):
    """The output directory holds an earlier run that this command would overwrite; names it."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or unreadable; the message names the file and what to do."""


UserError = (ConfigError, TeacherError, DataError, NonFiniteLossError, RunDirError, CheckpointError, FileNotFoundError)
