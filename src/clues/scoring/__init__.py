"""The CLUES training-dynamics score: per-record gradients, preconditioners, projection, the engine.

One file per idea: ``params`` (which LoRA weights), ``per_sample`` (batched per-record gradients
through hooks), ``preconditioners`` (adam / none / sqrtv), ``projection`` (seeded Rademacher),
``engine`` (checkpoints x batches, streamed to scores).
"""

from clues.scoring.engine import RunScores, ScoreSettings, Scorer, score_run, validation_weights
from clues.scoring.params import KEYWORDS as PARAM_KEYWORDS
from clues.scoring.params import select_blocks
from clues.scoring.preconditioners import PRECONDITIONERS

__all__ = [
    "PARAM_KEYWORDS",
    "PRECONDITIONERS",
    "RunScores",
    "ScoreSettings",
    "Scorer",
    "score_run",
    "select_blocks",
    "validation_weights",
]
