"""Score shapes several scorers share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def min_max_scores(values: Sequence[float]) -> list[float]:
    """Lower is better, normalised over the candidates: (max - v) / (max - min); all equal -> 1.0."""
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    span = high - low
    return [(high - v) / span for v in values]


def min_max_score_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """`min_max_scores` as array operations (the same float operations, so the same scores)."""
    array = np.asarray(values, dtype=np.float64)  # not copied: it is only read before `high - array`
    low, high = np.minimum.reduce(array), np.maximum.reduce(array)
    if high == low:
        return np.ones(len(array))
    array = high - array
    array /= high - low
    return array
