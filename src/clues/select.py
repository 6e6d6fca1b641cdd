"""Threshold policies and selection (CLUES.md section 3).

The server scores the public anchor records exactly like training records and sets tau from their
scores; each silo keeps its records with ``S(z) >= tau``. Because tau is one number and not a keep
ratio, a heavily polluted silo keeps few records and a clean one keeps most. What a silo reports
outward is :func:`summary` (counts), never its records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from clues.errors import CluesError

MODES = ("global", "per-silo")


@dataclass(frozen=True)
class Policy:
    """``mean`` of the anchor scores (the paper's choice), their ``quantile`` ``q``, or ``conformal``
    at miss rate ``q`` (see :func:`conformal_rank`)."""

    kind: str = "mean"
    q: float | None = None

    def __str__(self) -> str:
        return "mean" if self.kind == "mean" else f"{self.kind}:{self.q:g}"


def parse_policy(text: str) -> Policy:
    """``"mean"``, ``"quantile:q"`` with 0 <= q <= 1, or ``"conformal:alpha"`` with 0 < alpha < 1."""
    text = (text or "").strip()
    if text == "mean":
        return Policy("mean")
    kind, _, value = text.partition(":")
    if kind in ("quantile", "conformal"):
        try:
            q = float(value)
        except ValueError:
            q = math.nan
        if kind == "quantile" and not 0.0 <= q <= 1.0:
            raise CluesError(f"threshold policy {text!r}: q must be a number in [0, 1]")
        if kind == "conformal" and not 0.0 < q < 1.0:
            raise CluesError(f"threshold policy {text!r}: alpha must be a number between 0 and 1")
        return Policy(kind, q)
    raise CluesError(f"unknown threshold policy {text!r}; use 'mean', 'quantile:q' (e.g. quantile:0.25) "
                     "or 'conformal:alpha' (e.g. conformal:0.1)")


def conformal_rank(count: int, alpha: float) -> int:
    """The rank k (1-based) of the anchor score used as tau at miss rate ``alpha``.

    If a silo's clean records and the ``count`` anchors are exchangeable (drawn alike and scored
    alike), a clean record falls below the k-th smallest of the anchor scores with probability at
    most k / (count + 1); k = floor(alpha * (count + 1)) makes that at most alpha, so the expected
    clean recall is at least 1 - alpha. The paper's anchor mean cuts near the clean median instead
    (recall near one half, however good the ranking). With 10 anchors and alpha = 0.1, k = 1: the
    lowest anchor. With too few anchors for ``alpha`` (alpha * (count + 1) < 1) the lowest anchor is
    still the threshold, and the guarantee is only 1 - 1 / (count + 1): add anchors to reach it.
    """
    return max(1, math.floor(alpha * (count + 1) + 1e-9))


def threshold(anchor_scores: Sequence[float], policy: Policy | str = "mean") -> float:
    """tau from anchor scores: their mean, or their q-quantile (linear interpolation between order statistics)."""
    policy = parse_policy(policy) if isinstance(policy, str) else policy
    values = sorted(float(s) for s in anchor_scores)
    if not values:
        raise CluesError("no anchor scores to set a threshold from")
    if any(not math.isfinite(v) for v in values):
        raise CluesError("an anchor score is not finite; cannot set a threshold")
    if policy.kind == "mean":
        return math.fsum(values) / len(values)
    if policy.kind == "conformal":
        return values[conformal_rank(len(values), policy.q) - 1]
    position = policy.q * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def silo_thresholds(
    anchor_scores: Mapping[str, Sequence[float]], policy: Policy | str = "mean", mode: str = "global"
) -> dict[str, float]:
    """tau per silo from each silo's anchor scores (anchors scored on that silo's own checkpoints).

    ``global``: one tau from all anchor scores pooled, sent to every silo (in federated mode the
    checkpoints are shared and this is the only meaningful choice). ``per-silo``: each silo's tau from
    its own anchor scores (merging mode, where every silo trains on its own checkpoints).
    """
    if mode not in MODES:
        raise CluesError(f"unknown threshold mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "per-silo":
        return {silo: threshold(scores, policy) for silo, scores in anchor_scores.items()}
    tau = threshold([s for scores in anchor_scores.values() for s in scores], policy)
    return {silo: tau for silo in anchor_scores}


def own_domain_anchors(reply: Mapping, anchors: Sequence) -> list[float]:
    """A silo's scores of the anchors of its own domain(s), from its score reply.

    A silo scores its records against the validation gradient of its own domain (``w_other = 0``,
    the merging default), so only the anchors of that domain were scored on the records' terms;
    an anchor of another domain says nothing about where this silo's clean records lie. When the
    silo names no domain, or no anchor shares one (data without domain labels), every anchor counts.
    """
    scores = list(reply["anchor_scores"])
    domains = set(reply.get("domains") or ())
    mine = [s for s, a in zip(scores, anchors) if a.domain in domains]
    return mine or scores


def anchor_warnings(replies: Mapping[str, Mapping], anchors: Sequence) -> list[str]:
    """One line per silo that names its domains but shares none with the anchors: its threshold then
    falls back to every anchor (:func:`own_domain_anchors`), other domains' included, which may sit
    anywhere on this silo's scale. Worth a loud word, not a refusal: the run is still meaningful."""
    anchor_domains = {a.domain for a in anchors}
    lines = []
    for name, reply in replies.items():
        domains = sorted(set(reply.get("domains") or ()))
        if domains and not anchor_domains & set(domains):
            lines.append(f"silo {name!r}: no anchor is of its domain ({', '.join(domains)}); its threshold comes "
                         "from the anchors of other domains")
    return lines


def select(scores: Sequence[float], tau: float) -> list[bool]:
    """Keep decision per record: ``score >= tau`` (a NaN score is never kept)."""
    return [float(s) >= tau for s in scores]


def summary(decisions: Sequence[bool]) -> dict:
    """What a silo may report about its selection: counts only."""
    kept = sum(1 for d in decisions if d)
    total = len(decisions)
    return {"kept": kept, "total": total, "kept_ratio": kept / total if total else 0.0}


def select_top(scores: Sequence[float], count: int) -> list[bool]:
    """Keep decision per record: the ``count`` highest scores (ties broken by position, NaN last).

    The ``--match-count`` mode and ``random``: every method keeps, per silo, as many records as CLUES
    kept, so the comparison measures ranking alone, not where each method's threshold falls.
    """
    if count < 0:
        raise CluesError(f"cannot keep {count} records")
    order = sorted(range(len(scores)), key=lambda i: (not math.isfinite(scores[i]), -scores[i] if math.isfinite(scores[i]) else 0.0, i))
    chosen = set(order[:count])
    return [i in chosen for i in range(len(scores))]
