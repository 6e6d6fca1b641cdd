"""``clues``: the training-dynamics score itself, behind the common scorer interface.

The silo's CLUES path calls :func:`clues.scoring.engine.score_run` directly (it also reports the
per-checkpoint columns); this wrapper lets harnesses and tests treat CLUES like any other method.
"""

from __future__ import annotations

from clues.scoring.engine import score_run


def clues_scores(inputs, record_sets):
    result = score_run(inputs.warmup_run("clues"), record_sets, inputs.validation, inputs.settings,
                       base_model=inputs.base_model, console=inputs.console)
    return {name: result.total(name) for name in record_sets}
