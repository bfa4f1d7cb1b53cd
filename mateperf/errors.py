"""Errors a caller can act on. Every BadInput becomes exit code 2 with its message as one line."""

from __future__ import annotations


class BadInput(ValueError):
    """The user asked for something that cannot run: exit code 2, no traceback."""


class ModelFileError(BadInput):
    """The model path is missing, a directory, empty, truncated or not GGUF."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"model file {self.path}: {problem}")


class ParameterError(BadInput):
    """A parameter name, type or value that the phase cannot accept."""


class PhaseError(BadInput):
    """An unknown phase name."""


class RunAborted(RuntimeError):
    """A failure that ends the whole run, not one trial (an attached avatar that went away):
    exit code 1, the run directory records it, and the rows measured so far are kept.

    The trial runner re-raises it with `rows` (every row so far, the failed trial's included);
    a phase's `run()` sets `frame` (those rows as its stored frame) for the notebook to save.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.rows: list[dict] = []
        self.frame = None  # a pandas DataFrame once the phase has made one
