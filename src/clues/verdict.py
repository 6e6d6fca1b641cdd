"""The report's first lines: did selection give a better model than all records, and is it noise?

One run has one benchmark seed, so its only honest uncertainty is over the test questions. The
quality probe (:func:`clues.evaluate.preference_probe`) scores every condition on the same probe
pairs, so two conditions are compared pair by pair: the mean of the paired differences of their
outcomes, with a 95% normal interval (the outcomes are bounded, and a probe holds hundreds of pairs).
An interval that contains zero is reported as "within noise", not as a gain or a loss. Differences
across benchmark seeds are the job of ``benchmarks/quality.py``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

Z95 = 1.96


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """Mean of ``a[i] - b[i]`` and the half-width of its 95% normal interval; None without pairs."""
    if len(a) != len(b) or not a:
        return None
    diffs = [x - y for x, y in zip(a, b)]
    mean = math.fsum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, math.inf
    variance = math.fsum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, Z95 * math.sqrt(variance / len(diffs))


def judge(mean: float, half: float) -> str:
    """How a condition compares with training on all records, given its paired difference."""
    if mean - half > 0:
        return "better than"
    if mean + half < 0:
        return "worse than"
    return "no different, within noise, from"


def _wins(condition: Mapping) -> list[float] | None:
    return (condition.get("preference") or {}).get("wins")


def verdict(results: Mapping) -> list[str]:
    """One sentence per selected condition against ``mixed`` (and ``oracle`` against ``mixed``)."""
    conditions = results.get("conditions") or {}
    mixed = _wins(conditions.get("mixed") or {})
    if not mixed:
        return []
    lines = []
    for name, entry in conditions.items():
        wins = _wins(entry)
        if name in ("mixed", "base") or not wins:
            continue
        diff = paired_difference(wins, mixed)
        if diff is None:
            continue
        mean, half = diff
        what = "training on clean records only" if name == "oracle" else f"training on the records {name} kept"
        lines.append(
            f"**{name}**: {judge(mean, half)} training on all records: {what} prefers the real answer "
            f"over a corrupted one in {100 * sum(wins) / len(wins):.1f}% of {len(wins)} probe pairs, against "
            f"{100 * sum(mixed) / len(mixed):.1f}% ({100 * mean:+.1f} points, 95% interval "
            f"{100 * (mean - half):+.1f} to {100 * (mean + half):+.1f}, over test questions of this one seed)."
        )
    return lines
