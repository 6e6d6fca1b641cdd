"""The names of the selection methods, with what each needs: the one list that the run settings
validate against (``clues.config``) and the scorers implement (``clues.baselines``). It lives on the
ground floor so that neither has to import the other (docs/architecture.md, "The house")."""

from __future__ import annotations

# A fused score: the mean within-silo percentile of its components (clues.baselines.fusion). Chosen
# on design seed 1 of mixed-small, with single signals on seeds 1-3 (benchmarks/design_study.py;
# docs/results.md, "Choosing the score"): the worst-token tail gave the best three-way fusion; the
# IFD one is the runner-up and sees answers to other questions better.
FUSIONS = {
    "clues+perplexity+tail": ("clues", "perplexity", "tail"),
    "clues+perplexity+ifd": ("clues", "perplexity", "ifd"),
}
# Selection methods, in the order a benchmark runs them (random needs the count CLUES kept).
METHODS = ("clues", *FUSIONS, "loss", "perplexity", "tail", "ifd", "datainf", "less", "rds", "random")


def _with_fusions(parts: set[str]) -> tuple[str, ...]:
    """``parts`` in METHODS order, and every fusion that has one of them as a component."""
    return tuple(m for m in METHODS if m in parts or set(FUSIONS.get(m, ())) & parts)


# Methods that score with the silo's warm-up training run (the others need only the base model).
NEEDS_WARMUP = _with_fusions({"clues", "loss", "datainf", "less"})
# Methods that score along the validation gradient of the silo's own domain(s), other domains weighing
# ``[score] w_other`` (clues.scoring.engine.validation_weights): with w_other 0 they need a validation
# record of the silo's domain.
OWN_DOMAIN_DIRECTION = _with_fusions({"clues", "datainf"})
