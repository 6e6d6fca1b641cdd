"""Binned score counts: what a silo shares about its scores instead of the scores themselves."""

from __future__ import annotations

import math
from typing import Sequence

BINS = 30


def score_histogram(scores: Sequence[float], clean: Sequence[bool] | None = None, bins: int = BINS) -> dict:
    """Raw scores to the histogram form silos share: ``{"edges", "all"}`` plus ``clean``/``corrupted``."""
    finite = [float(s) for s in scores if math.isfinite(s)]
    if not finite:
        return {"edges": [], "all": []}
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]

    def counts(values):
        out = [0] * bins
        for v in values:
            if math.isfinite(v):
                out[min(int((v - low) / (high - low) * bins), bins - 1)] += 1
        return out

    hist = {"edges": edges, "all": counts(scores)}
    if clean is not None:
        hist["clean"] = counts([s for s, c in zip(scores, clean) if c])
        hist["corrupted"] = counts([s for s, c in zip(scores, clean) if not c])
    return hist
