"""Percentiles and the repetition rule: report the repetition with the median headline figure
and show the min-max spread of that figure over all repetitions (this machine is noisy)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    return percentile(values, 50), percentile(values, 95), percentile(values, 99)


def pick_median_rep(reps: Sequence[Sequence[float]], q: float = 95) -> tuple[int, str]:
    """Index of the repetition whose q-th percentile is the median one, and the spread text."""
    heads = [percentile(r, q) for r in reps]
    order = sorted(range(len(heads)), key=lambda i: heads[i])
    return order[len(order) // 2], spread(heads)


def spread(values: Sequence[float]) -> str:
    return f"{fmt(min(values))}-{fmt(max(values))}"


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"
