"""Score shapes several scorers share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from epp.compiled import warn_python_fallback
from epp.datastore.columns import HasRow, column, column_rows

try:  # the totals, their best and min-max scores in C (_scoresum.c): one call each, not several numpy calls
    from epp.scheduling._scoresum import complement as _compiled_complement
    from epp.scheduling._scoresum import max_ties as _compiled_max_ties
    from epp.scheduling._scoresum import min_max as _compiled_min_max
    from epp.scheduling._scoresum import weighted_sum as _compiled_weighted_sum
except ImportError:  # no C compiler at install: numpy, the same doubles
    _compiled_weighted_sum = None  # type: ignore[assignment]
    _compiled_max_ties = None  # type: ignore[assignment]
    _compiled_min_max = None  # type: ignore[assignment]
    _compiled_complement = None  # type: ignore[assignment]

TOTALS = "a scheduling profile's scores and totals over 128 candidates or more"
TOTALS_COST = "about 50 us more CPU per decision over 1,000 candidates"


def min_max_scores(values: Sequence[float]) -> list[float]:
    """Lower is better, normalised over the candidates: (max - v) / (max - min); all equal -> 1.0."""
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    span = high - low
    return [(high - v) / span for v in values]


def min_max_score_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """`min_max_scores` as array operations (the same float operations, so the same scores; in C
    one call where built, a zero's sign aside when the values hold both 0.0 and -0.0)."""
    array = np.asarray(values, dtype=np.float64)  # not copied: it is only read before `high - array`
    if _compiled_min_max is not None:
        scores = np.empty(len(array))
        if _compiled_min_max(array, scores):
            return scores
    else:
        warn_python_fallback(TOTALS, TOTALS_COST)
    low, high = np.minimum.reduce(array), np.maximum.reduce(array)
    if high == low:
        return np.ones(len(array))
    array = high - array
    array /= high - low
    return array


def min_max_score_column(candidates: Sequence[HasRow], name: str) -> np.ndarray:
    """`min_max_score_array` of the candidates' metrics column `name` (`epp.datastore.columns`),
    gathered in the same C call where built."""
    if _compiled_min_max is not None:
        table, rows = column_rows(candidates, name)
        scores = np.empty(len(rows))
        if _compiled_min_max(table, scores, rows):
            return scores
    return min_max_score_array(column(candidates, name))


def complement_column(candidates: Sequence[HasRow], name: str) -> np.ndarray:
    """1.0 - the candidates' metrics column `name` (`epp.datastore.columns`), gathered in the same
    C call where built; the same doubles."""
    if _compiled_complement is not None:
        table, rows = column_rows(candidates, name)
        scores = np.empty(len(rows))
        if _compiled_complement(table, scores, rows):
            return scores
    else:
        warn_python_fallback(TOTALS, TOTALS_COST)
    return 1.0 - column(candidates, name)


def weighted_totals(rows: list[np.ndarray], weights: tuple[float, ...], count: int) -> np.ndarray:
    """A profile's totals: each score clamped to [0, 1] (NaN and negatives to 0), times its row's
    weight, added row after row from 0.0: ((0 + w1 s1) + w2 s2) + ..., the same doubles as the
    list path's `total + weight * score`. `rows` are the scorers' arrays of `count` scores."""
    if _compiled_weighted_sum is not None:
        totals = np.empty(count)
        if _compiled_weighted_sum(rows, weights, totals):
            return totals
    else:
        warn_python_fallback(TOTALS, TOTALS_COST)
    return _weighted_totals(rows, weights, count)


def _weighted_totals(rows: list[np.ndarray], weights: tuple[float, ...], count: int) -> np.ndarray:
    """`weighted_totals` as numpy operations (the fallback, and for rows that are no contiguous
    float64 arrays): the rows clamped, weighted and summed as one matrix."""
    if not rows:
        return np.zeros(count)
    weighted = np.concatenate(rows).reshape(len(rows), count)
    # fmax turns NaN and negatives into 0.0 (a -0.0 into either zero: no sum keeps its sign)
    np.fmax(weighted, 0.0, out=weighted)
    np.minimum(weighted, 1.0, out=weighted)
    weighted *= np.array(weights, dtype=np.float64).reshape(len(rows), 1)
    # row by row from 0.0, in scorer order: ((0 + w1 s1) + w2 s2) + ...
    return np.add.reduce(weighted, axis=0, initial=0.0)


def max_ties(scores: np.ndarray) -> list[int]:
    """The positions of the highest scores, in order (none when a score is NaN)."""
    if _compiled_max_ties is not None:
        tied = _compiled_max_ties(scores)
        if tied is not None:
            return tied
    else:
        warn_python_fallback(TOTALS, TOTALS_COST)
    tied_positions: list[int] = (scores == np.maximum.reduce(scores)).nonzero()[0].tolist()
    return tied_positions
