"""What a silo says about its scores: a summary, a binned histogram and, with labels, ranking quality.

One function for every scoring reply (merging mode's ``score``, federated ``fed-score``), so both
modes describe a silo's scores the same way and never a single record's score.
"""

from __future__ import annotations

from typing import Sequence

import torch

from clues.histogram import score_histogram
from clues.metrics import corruption_metrics, roc_auc, roc_curve

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def score_report(scores: Sequence[float], clean: Sequence[bool] | None = None,
                 corruptions: Sequence[str | None] | None = None, ranking: bool = True) -> dict:
    """``summary`` and ``histogram``; with labels ``auroc`` (and ``by_corruption`` with corruption types).

    ``ranking`` adds the quantiles and the ROC curve: a finished scoring's reply. A federated score
    round replies the running sum after every round, so it sends only the cheap parts.
    """
    values = torch.tensor(list(scores), dtype=torch.float64)
    summary = {"count": len(scores), "mean": float(values.mean()),
               "std": float(values.std()) if len(scores) > 1 else 0.0}
    if ranking:
        summary["quantiles"] = {str(q): float(torch.quantile(values, q)) for q in QUANTILES}
    report = {"summary": summary, "histogram": score_histogram(scores, clean)}
    if clean is not None:  # benchmarks only: aggregate quality of the ranking, never a record's label
        report["auroc"] = roc_auc(scores, clean)
        if ranking:
            report["roc"] = roc_curve(scores, clean)
        if corruptions is not None:
            report["by_corruption"] = corruption_metrics(scores, clean, corruptions)
    return report
