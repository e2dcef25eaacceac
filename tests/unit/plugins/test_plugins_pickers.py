"""max-score-picker, random-picker, weighted-random-picker (gie-epp.md 3.3)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from epp.plugins.max_score_picker import MaxScorePicker
from epp.plugins.random_picker import RandomPicker
from epp.plugins.weighted_random_picker import WeightedRandomPicker
from tests.unit.plugin_helpers import context, endpoints, plugin, request

REQ = request()


def names(picked: list) -> list[str]:
    return [e.name for e in picked]


def test_max_score_picks_the_best() -> None:
    picker = plugin(MaxScorePicker)
    assert names(picker.pick(REQ, endpoints(3), [0.2, 0.9, 0.5])) == ["e1"]


def test_max_score_breaks_ties_uniformly_at_random() -> None:
    picker = plugin(MaxScorePicker, ctx=context(seed=7))
    candidates = endpoints(4)
    picks = Counter(names(picker.pick(REQ, candidates, [1.0, 1.0, 0.5, 1.0]))[0] for _ in range(3000))
    assert set(picks) == {"e0", "e1", "e3"}
    assert all(850 < n < 1150 for n in picks.values())


def test_max_score_several_endpoints_best_first_with_random_tie_order() -> None:
    picker = plugin(MaxScorePicker, {"maxNumOfEndpoints": 3}, context(seed=3))
    candidates = endpoints(5)
    orders = {tuple(names(picker.pick(REQ, candidates, [0.1, 0.8, 0.8, 0.3, 0.9]))) for _ in range(200)}
    assert orders == {("e4", "e1", "e2"), ("e4", "e2", "e1")}


def test_max_score_asking_for_more_than_exist_returns_all() -> None:
    picker = plugin(MaxScorePicker, {"maxNumOfEndpoints": 10})
    assert sorted(names(picker.pick(REQ, endpoints(2), [0.0, 0.0]))) == ["e0", "e1"]


@pytest.mark.parametrize("cls", [MaxScorePicker, RandomPicker, WeightedRandomPicker])
@pytest.mark.parametrize("count", [0, -4])
def test_non_positive_max_num_of_endpoints_means_one(cls: type[MaxScorePicker], count: int) -> None:
    picker = plugin(cls, {"maxNumOfEndpoints": count})
    assert len(picker.pick(REQ, endpoints(3), [0.3, 0.2, 0.1])) == 1


@pytest.mark.parametrize("cls", [MaxScorePicker, RandomPicker, WeightedRandomPicker])
def test_single_candidate_is_picked(cls: type[MaxScorePicker]) -> None:
    assert names(plugin(cls).pick(REQ, endpoints(1), [0.0])) == ["e0"]


def test_random_picker_ignores_scores_and_returns_distinct_endpoints() -> None:
    picker = plugin(RandomPicker, {"maxNumOfEndpoints": 2}, context(seed=1))
    candidates = endpoints(3)
    firsts: Counter[str] = Counter()
    for _ in range(3000):
        picked = names(picker.pick(REQ, candidates, [1.0, 0.0, 0.0]))
        assert len(set(picked)) == 2
        firsts[picked[0]] += 1
    assert all(850 < n < 1150 for n in firsts.values())


def test_random_picker_over_an_array_picks_as_over_a_list() -> None:
    """A profile over many candidates hands the totals as an array: the same picks, same seed."""
    candidates = endpoints(200)
    listed = plugin(RandomPicker, {"maxNumOfEndpoints": 3}, context(seed=5))
    arrayed = plugin(RandomPicker, {"maxNumOfEndpoints": 3}, context(seed=5))
    scores = np.linspace(0.0, 1.0, len(candidates))
    for _ in range(50):
        assert names(arrayed.pick_array(REQ, candidates, scores)) == names(
            listed.pick(REQ, candidates, scores.tolist())
        )


def test_weighted_random_picks_in_proportion_to_scores() -> None:
    picker = plugin(WeightedRandomPicker, ctx=context(seed=11))
    candidates = endpoints(3)
    picks = Counter(names(picker.pick(REQ, candidates, [0.25, 0.75, 0.0]))[0] for _ in range(8000))
    assert picks["e2"] == 0  # a zero score never beats a positive one
    assert 0.70 < picks["e1"] / 8000 < 0.80


def test_weighted_random_with_all_zero_scores_is_uniform() -> None:
    picker = plugin(WeightedRandomPicker, ctx=context(seed=5))
    candidates = endpoints(3)
    picks = Counter(names(picker.pick(REQ, candidates, [0.0, 0.0, 0.0]))[0] for _ in range(3000))
    assert all(850 < n < 1150 for n in picks.values())


def test_weighted_random_several_endpoints_are_distinct_and_positive_first() -> None:
    picker = plugin(WeightedRandomPicker, {"maxNumOfEndpoints": 2}, context(seed=2))
    for _ in range(200):
        picked = names(picker.pick(REQ, endpoints(3), [0.0, 0.5, 0.5]))
        assert sorted(picked) == ["e1", "e2"]
