"""Errors that carry the place of the problem, so every loader reports bad input the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem in an input file, printed as ``FILE:LINE: FIELD: reason``.

    ``field`` is ``-`` when the problem is not about one field (bad JSON, empty file).
    """

    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"


class CluesError(Exception):
    """An error the user can fix; the CLI prints it without a traceback and exits non-zero."""


class DataError(CluesError):
    """One or more problems in input data files."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class TrainingDiverged(CluesError):
    """A training step's loss is not finite: stepping on would write NaN weights, and every later
    stage (scores, threshold, merge) would run on them without a word. Its public text is fixed words
    (:func:`clues.failures.public_reason`), so a federation learns why a silo stopped."""

    PUBLIC = "training diverged (a step's loss is not finite): lower the learning rate"


_RUST_IO = re.compile(r"I/O error: (.+?) \(os error \d+\)")


def os_cause(exc: BaseException) -> str | None:
    """The operating system's words for why a file operation failed ("No space left on device"), from
    an ``OSError`` or from the text safetensors' writer gives its own error; None when there are none.
    Fixed words of the OS, never a path: they may be told to a server."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    found = _RUST_IO.search(str(exc))
    return found.group(1) if found else None
