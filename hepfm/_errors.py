"""Errors that reach a user as one clear line (file, key, what is wrong), never a traceback."""

from __future__ import annotations

__all__ = ["HepfmError", "StoreError", "TaskError", "describe_validation_error"]


class HepfmError(Exception):
    """A problem with the user's input or environment, explained in one line.

    Args:
        message: What is wrong, naming the file and the key where known.
        exit_code: Process exit status the CLI uses for this error.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class StoreError(HepfmError):
    """An event store that cannot be read or written as asked."""


class TaskError(HepfmError):
    """A task file (or an override) that does not validate.

    Args:
        problems: Every problem found, each already one formatted line.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def describe_validation_error(exc: Exception) -> str:
    """A pydantic ``ValidationError`` as ``key: message; key: message`` on one line."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}" for e in errors())
