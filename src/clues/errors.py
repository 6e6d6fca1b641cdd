"""Errors that carry the place of the problem, so every loader reports bad input the same way."""

from __future__ import annotations

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
