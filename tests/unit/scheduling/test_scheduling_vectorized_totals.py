"""Over many candidates a profile sums scores as arrays: the totals must be the same floats the
per-candidate loop gives, wild scores included."""

from __future__ import annotations

import math
import random

import pytest

from epp.scheduling.framework.profile import VECTOR_MIN_CANDIDATES
from tests.unit.plugin_helpers import endpoints
from tests.unit.scheduling.test_scheduling_framework import FixedScorer, run_profile


def loop_totals(columns: list[tuple[list[float], float]], count: int) -> dict[str, float]:
    totals = [0.0] * count
    for scores, weight in columns:
        totals = [
            total + weight * (0.0 if not s >= 0.0 else 1.0 if s > 1.0 else s)
            for total, s in zip(totals, scores, strict=True)
        ]
    return {f"e{i}": total for i, total in enumerate(totals)}


@pytest.mark.parametrize("seed", range(5))
def test_array_totals_equal_the_loop(seed: int) -> None:
    rng = random.Random(seed)
    count = VECTOR_MIN_CANDIDATES + rng.randrange(0, 900)
    wild = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, 1.5, -2.0, 3, 0]
    columns = []
    for weight in (2.0, 2, 3.0, 0.7):
        scores = [rng.choice(wild) if rng.random() < 0.2 else rng.random() for _ in range(count)]
        columns.append((scores, weight))
    scorers = [(FixedScorer(f"s{i}", scores), weight) for i, (scores, weight) in enumerate(columns)]
    _, totals = run_profile([], scorers, endpoints(count))
    expected = loop_totals(columns, count)
    assert totals == expected
    # the signs of zeros too
    assert {e: repr(t) for e, t in totals.items()} == {e: repr(t) for e, t in expected.items()}
    assert all(type(t) is float for t in totals.values())


def test_no_scorers_leave_every_total_at_zero() -> None:
    _, totals = run_profile([], [], endpoints(VECTOR_MIN_CANDIDATES))
    assert set(map(repr, totals.values())) == {"0.0"}


def test_wrong_length_is_an_error_on_the_array_path_too() -> None:
    class ShortScorer(FixedScorer):
        def score(self, request, candidates):  # type: ignore[no-untyped-def]
            return self.scores

    with pytest.raises(ValueError):
        run_profile([], [(ShortScorer("s", [1.0]), 1.0)], endpoints(VECTOR_MIN_CANDIDATES))
