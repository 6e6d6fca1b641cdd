"""Fused scores: the mean, over several scorers, of each record's percentile within its silo.

No single score sees every corruption. On SmolLM2 (benchmarks/signals.py) the base model's loss
finds noisy and truncated answers, IFD (the prompt's help) finds answers to other questions and in
other languages, and CLUES' gradient alignment ranks by usefulness for the validation domain. Their
scales have nothing in common (a log-perplexity, a ratio, a sum of learning-rate weighted dot
products), and a silo's scale differs from another's, so they are combined by rank: every record's
score under each component becomes its mid-rank percentile among the silo's own records, and the
fused score is the mean of those percentiles. An anchor is placed by the same map (its percentile
among the silo's records), so the anchors are thresholded on the very scale of the records. Rank
averaging needs no weights to tune and no labels, and one outlying score cannot dominate it.

The fused score lives in [0, 1] in every silo. A record that ties with itself counts one half, so a
silo's median record scores about 0.5 whatever the components.
"""

from __future__ import annotations

import bisect
from typing import Mapping, Sequence

import torch

from clues.methods import FUSIONS  # the fused methods and their components, all methods of clues.baselines


def percentiles(reference: Sequence[float], values: Sequence[float]) -> torch.Tensor:
    """Mid-rank of each value among ``reference``, divided by its size: in [0, 1], ties count one half."""
    ordered = sorted(float(v) for v in reference)
    n = len(ordered)
    return torch.tensor([(bisect.bisect_left(ordered, float(v)) + bisect.bisect_right(ordered, float(v))) / (2 * n)
                         for v in values], dtype=torch.float64)


def fuse(components: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{set: mean over components of percentile among that component's "data" scores}``."""
    sets = list(components[0])
    fused = {name: torch.zeros(len(components[0][name]), dtype=torch.float64) for name in sets}
    for scores in components:
        reference = scores["data"].tolist()
        for name in sets:
            fused[name] += percentiles(reference, scores[name].tolist()) / len(components)
    return fused


def fused_scores(method: str):
    """The scorer of the fused ``method``: score with each component, then :func:`fuse`."""

    def scorer(inputs, record_sets):
        from clues.baselines import score_records

        components = []
        for name in FUSIONS[method]:
            if name not in inputs.known:  # scored here: the silo keeps it for the component's own turn
                inputs.known[name] = score_records(name, inputs, record_sets)
            components.append(inputs.known[name])
        return fuse(components)

    return scorer
