"""Score shapes several scorers share."""

from __future__ import annotations

from collections.abc import Sequence


def min_max_scores(values: Sequence[float]) -> list[float]:
    """Lower is better, normalised over the candidates: (max - v) / (max - min); all equal -> 1.0."""
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    span = high - low
    return [(high - v) / span for v in values]
