"""The report's first lines: did selection give a better model than all records, and is it noise?

One run has one benchmark seed, so its only honest uncertainty is over the test questions. Every
condition answers the same test questions (:mod:`clues.answers`), and on a benchmark the quality
probe (:func:`clues.evaluate.preference_probe`) scores every condition on the same probe pairs, so
two conditions are compared item by item: the mean of the paired differences of their outcomes
(an answer passing every check, a probe pair won), with a 95% normal interval (the outcomes are
bounded, and there are a hundred or more of them).
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


def _passed(condition: Mapping) -> list[float] | None:
    return (condition.get("answers") or {}).get("passed")


def _check_outcomes(condition: Mapping, check: str) -> list[float | None]:
    rows = (condition.get("answers") or {}).get("rows") or []
    return [None if row["passes"].get(check) is None else float(row["passes"][check]) for row in rows]


def moved_checks(entry: Mapping, mixed: Mapping) -> list[str]:
    """The answer checks whose pass rate differs from mixed's beyond noise: ``"language +9.4"`` (points)."""
    from clues.answers.quality import CHECKS

    moved = []
    for check in CHECKS:
        pairs = [(a, b) for a, b in zip(_check_outcomes(entry, check), _check_outcomes(mixed, check))
                 if a is not None and b is not None]
        diff = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
        if diff and abs(diff[0]) - diff[1] > 0:
            moved.append(f"{check.replace('_', ' ')} {100 * diff[0]:+.1f}")
    return moved


def verdict(results: Mapping) -> list[str]:
    """One sentence per selected condition against ``mixed`` (and ``oracle`` against ``mixed``): first on
    the answers the models write (every run has them), then on the quality probe (benchmarks with one).

    Federated conditions (``fl-*``) are compared with ``fl-mixed`` and ``fl-oracle``, each family
    against its own references (a run compared with ``--compare`` holds both).
    """
    conditions = results.get("conditions") or {}
    lines = []
    for prefix in ("", "fl-"):
        family = {name: entry for name, entry in conditions.items() if name.startswith("fl-") == bool(prefix)}
        lines += _family_verdict(family, prefix, _passed, _answer_sentence)
        lines += _family_verdict(family, prefix, _wins, _probe_sentence)
    return lines


def _answer_sentence(name: str, judged: str, what: str, entry: Mapping, mixed_entry: Mapping,
                     ours: list[float], mixed: list[float], diff: tuple[float, float]) -> str:
    mean, half = diff
    moved = moved_checks(entry, mixed_entry)
    return (f"**{name}**: {judged} training on all records: {what} writes answers that pass every check "
            f"(language, complete, fluent, relevant) for {100 * sum(ours) / len(ours):.1f}% of "
            f"{len(ours)} test questions, against {100 * sum(mixed) / len(mixed):.1f}% ({100 * mean:+.1f} points, "
            f"95% interval {100 * (mean - half):+.1f} to {100 * (mean + half):+.1f}, answer by answer)."
            + (f" Checks that moved beyond noise: {', '.join(moved)}." if moved else " No single check moved beyond noise."))


def _probe_sentence(name: str, judged: str, what: str, entry: Mapping, mixed_entry: Mapping,
                    ours: list[float], mixed: list[float], diff: tuple[float, float]) -> str:
    mean, half = diff
    return (f"**{name}** (quality probe): {judged} training on all records: {what} prefers the real answer "
            f"over a corrupted one in {100 * sum(ours) / len(ours):.1f}% of {len(ours)} probe pairs, against "
            f"{100 * sum(mixed) / len(mixed):.1f}% ({100 * mean:+.1f} points, 95% interval "
            f"{100 * (mean - half):+.1f} to {100 * (mean + half):+.1f}, over test questions of this one seed).")


def _family_verdict(conditions: Mapping, prefix: str, outcomes, sentence) -> list[str]:
    mixed_entry = conditions.get(f"{prefix}mixed") or {}
    mixed = outcomes(mixed_entry)
    if not mixed:
        return []
    # The oracle's gain over all records, when it is more than noise: what selection can recover.
    oracle = paired_difference(outcomes(conditions.get(f"{prefix}oracle") or {}) or [], mixed)
    gap = oracle[0] if oracle and oracle[0] - oracle[1] > 0 else None
    lines = []
    for name, entry in conditions.items():
        ours = outcomes(entry)
        if name in (f"{prefix}mixed", "base") or not ours:
            continue
        diff = paired_difference(ours, mixed)
        if diff is None:
            continue
        what = "training on clean records only" if name == f"{prefix}oracle" else f"training on the records {name} kept"
        lines.append(sentence(name, judge(*diff), what, entry, mixed_entry, ours, mixed, diff)
                     + (f" It recovers {100 * diff[0] / gap:.0f}% of the oracle's gain." if gap and name != f"{prefix}oracle" else ""))
    return lines
