"""How well a selection separates clean from low-quality records, with "clean" as the positive class.

Precision = clean among kept; recall = kept among clean (the paper's headline: over 99% of the clean
data kept); accuracy over all records; ROC AUC from the raw scores, independent of any threshold,
with tied scores counted as half (the Mann-Whitney statistic with mid-ranks). Undefined values
(0/0, or AUC with one class only) are ``None``, never a made-up 0 or 1.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from clues.errors import CluesError
from clues.io import read_rows


def safe_ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def selection_metrics(decisions: Sequence[bool], clean: Sequence[bool]) -> dict:
    """Counts and precision / recall / F1 / accuracy of keep decisions against clean labels."""
    if len(decisions) != len(clean):
        raise ValueError("decisions and labels differ in length")
    tp = sum(1 for d, c in zip(decisions, clean) if d and c)
    fp = sum(1 for d, c in zip(decisions, clean) if d and not c)
    fn = sum(1 for d, c in zip(decisions, clean) if not d and c)
    tn = len(clean) - tp - fp - fn
    return {
        "records": len(clean),
        "clean": tp + fn,
        "kept": tp + fp,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": safe_ratio(tp, tp + fp),
        "recall": safe_ratio(tp, tp + fn),
        "f1": safe_ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": safe_ratio(tp + tn, len(clean)),
    }


def roc_auc(scores: Sequence[float], clean: Sequence[bool]) -> float | None:
    """P(score of a random clean record > that of a random low-quality one), ties counting 1/2."""
    if len(scores) != len(clean):
        raise ValueError("scores and labels differ in length")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1  # mid-rank of a tie group, 1-based
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        i = j + 1
    positives = sum(1 for c in clean if c)
    negatives = len(clean) - positives
    if not positives or not negatives:
        return None
    rank_sum = sum(r for r, c in zip(ranks, clean) if c)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


ROC_POINTS = 101


def average_precision(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the precision-recall curve of ranking ``positive`` records first (highest score
    first), as the mean precision at each positive's rank; tied scores share their group's precision.
    None without a positive."""
    if len(scores) != len(positive):
        raise ValueError("scores and labels differ in length")
    total = sum(1 for p in positive if p)
    if not total:
        return None
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits = seen = 0
    area = 0.0
    i = 0
    while i < len(order):  # one tie group at a time: its positives all get the group's end precision
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        group = sum(1 for k in range(i, j + 1) if positive[order[k]])
        hits += group
        seen += j - i + 1
        area += group * hits / seen
        i = j + 1
    return area / total


def corruption_metrics(scores: Sequence[float], clean: Sequence[bool], corruption: Sequence[str | None],
                       kept: Sequence[bool] | None = None) -> dict[str, dict]:
    """Per corruption type: how well the scores find that kind of bad record among the clean ones.

    For each type k, on the clean records plus those of type k: ``auroc`` (clean above type k, as
    :func:`roc_auc`), ``auprc`` (type k found first when ranking by lowest score: the precision-recall
    area of detecting it, whose chance level is its share, ``base_rate``) and, given ``kept``,
    ``recall`` (the share of type-k records the selection dropped). Aggregates only: nothing here
    names a record, so a silo may send it.
    """
    kinds = sorted({k for k, c in zip(corruption, clean) if not c and k})
    out = {}
    for kind in kinds:
        members = [i for i, (k, c) in enumerate(zip(corruption, clean)) if c or k == kind]
        bad = [not clean[i] for i in members]
        entry = {
            "count": sum(bad),
            "base_rate": sum(bad) / len(members),
            "auroc": roc_auc([scores[i] for i in members], [clean[i] for i in members]),
            "auprc": average_precision([-scores[i] for i in members], bad),
        }
        if kept is not None:
            entry["recall"] = safe_ratio(sum(1 for i in members if not clean[i] and not kept[i]), sum(bad))
        out[kind] = entry
    return out


def roc_curve(scores: Sequence[float], clean: Sequence[bool], points: int = ROC_POINTS) -> list[float] | None:
    """True-positive rate at ``points`` evenly spaced false-positive rates 0..1 (keeping every record
    with score >= t, for t from high to low), or None with one class only.

    A fixed FPR grid lets the server average the curves of several silos vertically (Fawcett 2006)
    without seeing a single score; tied scores move FPR and TPR together (a diagonal segment), so the
    area under the returned curve matches :func:`roc_auc` up to the grid resolution.
    """
    if len(scores) != len(clean):
        raise ValueError("scores and labels differ in length")
    positives = sum(1 for c in clean if c)
    negatives = len(clean) - positives
    if not positives or not negatives:
        return None
    corners = [(0.0, 0.0)]
    tp = fp = 0
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            tp, fp = (tp + 1, fp) if clean[order[k]] else (tp, fp + 1)
        corners.append((fp / negatives, tp / positives))
        i = j + 1
    curve = []
    for step in range(points):
        x = step / (points - 1)
        # the last corner at or left of x, then linear towards the next one
        k = max(n for n, (fx, _) in enumerate(corners) if fx <= x + 1e-12)
        fx, ty = corners[k]
        if k + 1 < len(corners) and corners[k + 1][0] > fx:
            nx, ny = corners[k + 1]
            ty += (ny - ty) * (x - fx) / (nx - fx)
        curve.append(round(ty, 6))
    return curve


def load_labels(path) -> dict[str, dict]:
    """``labels.jsonl`` rows (``{"id", "silo", "clean", ...}``) by record id."""
    labels = {}
    for number, row in read_rows(path, "a labels file (one {\"id\": ..., \"clean\": true/false} per line)"):
        if not isinstance(row.get("id"), str) or not isinstance(row.get("clean"), bool):
            field = "id" if not isinstance(row.get("id"), str) else "clean"
            raise CluesError(f"{path}:{number}: {field}: a label row needs a string 'id' and a boolean 'clean'")
        labels[row["id"]] = row
    return labels


def evaluate(
    labels: Mapping[str, dict],
    scores: Mapping[str, float] | None = None,
    decisions: Mapping[str, bool] | None = None,
    tau: float | Mapping[str, float] | None = None,
) -> dict:
    """Metrics overall and per silo for the labelled records that were scored or decided.

    Give ``scores`` (AUC, and with ``tau`` also the decisions ``score >= tau``; ``tau`` may be one
    number or one per silo) and/or ``decisions`` directly. Every scored id must have a label.
    """
    if scores is None and decisions is None:
        raise ValueError("give scores or decisions")
    ids = list(scores if scores is not None else decisions)
    unknown = [i for i in ids if i not in labels]
    if unknown:
        raise CluesError(f"{len(unknown)} scored records have no label (e.g. {unknown[0]!r})")
    silo_of = {i: labels[i].get("silo") or "all" for i in ids}
    if decisions is None and scores is not None and tau is not None:
        tau_of = (lambda i: tau[silo_of[i]]) if isinstance(tau, Mapping) else (lambda i: tau)
        decisions = {i: scores[i] >= tau_of(i) for i in ids}
    groups: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        groups[silo_of[i]].append(i)

    def block(members: list[str]) -> dict:
        clean = [labels[i]["clean"] for i in members]
        out: dict = {}
        if decisions is not None:
            out.update(selection_metrics([decisions[i] for i in members], clean))
        else:
            out.update({"records": len(members), "clean": sum(clean)})
        if scores is not None:
            out["auroc"] = roc_auc([scores[i] for i in members], clean)
        return out

    return {"overall": block(ids), "silos": {silo: block(members) for silo, members in sorted(groups.items())}}
