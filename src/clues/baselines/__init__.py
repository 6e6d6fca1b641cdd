"""Data-selection scorers behind one interface: records in, one score per record out, higher = keep.

Every method runs inside a silo, on the silo's own records and the public sets it was sent, and is
thresholded like CLUES: by its own scores of the public anchor set (CLUES.md section 5). So one
:func:`score_records` call scores the silo's records (``"data"``) and any public record sets
(``"anchor"``) in the same way, on the same model and checkpoints.

=============  ======================================================  ===============================
method         score (higher = keep)                                   model
=============  ======================================================  ===============================
``clues``      sum_c eta_c <G_c(z), g_val,c> (:mod:`clues.scoring`)    the silo's warm-up checkpoints
``loss``       minus the loss under a run that never saw the record   two half runs (warm-up settings)
``perplexity`` minus the response loss given the instruction           the base model
``tail``       minus the loss of the worst tenth of response tokens    the base model
``ifd``        minus loss(response | instruction) / loss(response)     the base model
``datainf``    minus the DataInf influence on the validation loss      the warm-up run's last checkpoint
``less``       max over domains of sum_c eta_c cos(G_c(z), g_val,d,c)   the silo's warm-up checkpoints
``rds``        max over domains of the mean cosine of pooled states    the base model
``random``     seeded uniform noise (kept count matched to CLUES)      none
``a+b(+c)``    mean within-silo percentile of methods a, b (and c)     those of its components
=============  ======================================================  ===============================

Each method is one function ``(inputs, record_sets) -> {set name: float64 [N]}`` in a module of its own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from clues.data.template import DEFAULT_MAX_LENGTH
from clues.data.records import Record
from clues.baselines.fusion import fused_scores
from clues.errors import CluesError
from clues.methods import FUSIONS, METHODS
from clues.scoring.engine import ScoreSettings

_SCORERS = {
    "clues": ("clues.baselines.trace", "clues_scores"),
    "loss": ("clues.baselines.heldout_loss", "heldout_loss_scores"),
    "perplexity": ("clues.baselines.likelihood", "perplexity_scores"),
    "tail": ("clues.baselines.likelihood", "tail_scores"),
    "ifd": ("clues.baselines.likelihood", "ifd_scores"),
    "datainf": ("clues.baselines.datainf", "datainf_scores"),
    "less": ("clues.baselines.less", "less_scores"),
    "rds": ("clues.baselines.rds", "rds_scores"),
    "random": ("clues.baselines.uniform", "random_scores"),
}


@dataclass(frozen=True)
class ScoringInputs:
    """What a scorer may use, all of it available inside the silo.

    ``run_dir``: the silo's warm-up run on all its records (checkpoints with Adam moments and eta);
    ``base_model``: the shared base model; ``validation``: the public validation records;
    ``settings``: batch size, device, parameter subset, preconditioner, domain weights (as for CLUES);
    ``max_length`` / ``template``: the encoding every stage uses; ``seed``: for ``random``.
    """

    base_model: str
    validation: Sequence[Record]
    settings: ScoreSettings = ScoreSettings()
    run_dir: Path | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    template: str = "alpaca"
    seed: int = 0
    console: object = None
    # Scores the silo already has for these very record sets and settings ({method: {set: scores}}):
    # a fused method takes its components from here instead of scoring them again, and adds those it scored.
    known: dict = field(default_factory=dict)

    def warmup_run(self, method: str) -> Path:
        if self.run_dir is None:
            raise CluesError(f"method {method!r} scores with the silo's warm-up training run, and there is none")
        return Path(self.run_dir)


def check_methods(methods: Sequence[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CluesError(f"unknown selection method {unknown[0]!r}; choose from {', '.join(METHODS)}")


def score_records(method: str, inputs: ScoringInputs, record_sets: Mapping[str, Sequence[Record]]) -> dict[str, torch.Tensor]:
    """``{set name: float64 [len(set)]}``, higher = keep. ``record_sets["data"]`` are the silo's own records
    (DataInf builds its Hessian approximation from them); other sets (the anchors) are only scored."""
    check_methods([method])
    if "data" not in record_sets:
        raise CluesError("score_records needs the silo's own records under the name 'data'")
    if method in FUSIONS:
        scores = fused_scores(method)(inputs, record_sets)
    else:
        module, function = _SCORERS[method]
        scores = getattr(importlib.import_module(module), function)(inputs, record_sets)
    for name, records in record_sets.items():
        values = scores[name]
        if tuple(values.shape) != (len(records),):
            raise CluesError(f"method {method!r} returned {tuple(values.shape)} scores for {len(records)} {name} records")
    return {name: scores[name].to(torch.float64) for name in record_sets}
