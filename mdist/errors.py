"""Errors that reach the user as one clear line (no traceback)."""
from mdist.config import ConfigError
from mdist.teacher import TeacherError


class DataError(ValueError):
    """Bad training or evaluation data; the message names the file (and line where known)."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; the message names step, student and term."""


UserError = (ConfigError, TeacherError, DataError, NonFiniteLossError, FileNotFoundError)
