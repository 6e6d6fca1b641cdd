"""Is a gap between two conditions noise? Paired differences with a 95% normal interval.

Two conditions evaluated on the same test records (or the same probe pairs) are compared item by
item: the mean of the paired differences, and the half-width of its 95% normal interval. The items
are many (hundreds of records or pairs) and bounded, so the normal interval is the honest one. The
verdict of a report and the oracle gain recovered both ask this before they read anything into a gap.
"""

from __future__ import annotations

import math
from typing import Sequence

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


def order_quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile as an order statistic: the ceil(q * n)-th smallest value (the largest for q = 1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def clearly_above(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` exceeds ``b`` pair by pair with a 95% interval that excludes zero."""
    diff = paired_difference(a, b)
    return diff is not None and diff[0] - diff[1] > 0
