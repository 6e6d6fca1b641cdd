"""The report's first lines: did selection give a better model than all records, and is it noise?

One run has one benchmark seed, so its only honest uncertainty is over the test questions. The
quality probe (:func:`clues.evaluate.preference_probe`) scores every condition on the same probe
pairs, so two conditions are compared pair by pair: the mean of the paired differences of their
outcomes, with a 95% normal interval (the outcomes are bounded, and a probe holds hundreds of pairs).
An interval that contains zero is reported as "within noise", not as a gain or a loss. Differences
across benchmark seeds are the job of ``benchmarks/quality.py``.
"""

from __future__ import annotations

from typing import Mapping

from clues.stats import paired_difference


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
    """One sentence per selected condition against ``mixed`` (and ``oracle`` against ``mixed``).

    Federated conditions (``fl-*``) are compared with ``fl-mixed`` and ``fl-oracle``, each family
    against its own references (a run compared with ``--compare`` holds both).
    """
    conditions = results.get("conditions") or {}
    lines = []
    for prefix in ("", "fl-"):
        family = {name: entry for name, entry in conditions.items() if name.startswith("fl-") == bool(prefix)}
        lines += _family_verdict(family, prefix)
    return lines


def _family_verdict(conditions: Mapping, prefix: str) -> list[str]:
    mixed = _wins(conditions.get(f"{prefix}mixed") or {})
    if not mixed:
        return []
    # The oracle's gain over all records, when it is more than noise: what selection can recover.
    oracle = paired_difference(_wins(conditions.get(f"{prefix}oracle") or {}) or [], mixed)
    gap = oracle[0] if oracle and oracle[0] - oracle[1] > 0 else None
    lines = []
    for name, entry in conditions.items():
        wins = _wins(entry)
        if name in (f"{prefix}mixed", "base") or not wins:
            continue
        diff = paired_difference(wins, mixed)
        if diff is None:
            continue
        mean, half = diff
        what = "training on clean records only" if name == f"{prefix}oracle" else f"training on the records {name} kept"
        lines.append(
            f"**{name}**: {judge(mean, half)} training on all records: {what} prefers the real answer "
            f"over a corrupted one in {100 * sum(wins) / len(wins):.1f}% of {len(wins)} probe pairs, against "
            f"{100 * sum(mixed) / len(mixed):.1f}% ({100 * mean:+.1f} points, 95% interval "
            f"{100 * (mean - half):+.1f} to {100 * (mean + half):+.1f}, over test questions of this one seed)."
            + (f" It recovers {100 * mean / gap:.0f}% of the oracle's gain." if gap and name != f"{prefix}oracle" else "")
        )
    return lines
