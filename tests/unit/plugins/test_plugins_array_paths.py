"""Over many candidates a profile asks scorers for `score_array` and the picker for `pick_array`:
each must give exactly what the list methods give (the same floats, the same pick from the same
random state), or decisions would change with the number of candidates."""

from __future__ import annotations

import random

import numpy as np
import pytest

from epp.datastore import Endpoint
from epp.plugins.kv_cache_utilization_scorer import KvCacheUtilizationScorer
from epp.plugins.max_score_picker import MaxScorePicker
from epp.plugins.no_hit_lru_scorer import NoHitLruScorer
from epp.plugins.queue_scorer import QueueScorer
from epp.scheduling.framework import Scorer
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import context, endpoint, plugin, request
from tests.unit.plugins.test_plugins_prefix import producer_and_scorer, route


def crowd(seed: int, count: int = 300) -> list[Endpoint]:
    rng = random.Random(seed)
    return [
        endpoint(f"e{i}", address=f"10.0.{i // 250}.{i % 250 + 1}", queue=rng.randrange(5), kv=rng.random())
        for i in range(count)
    ]


@pytest.mark.parametrize("cls", [QueueScorer, KvCacheUtilizationScorer])
@pytest.mark.parametrize("seed", range(3))
def test_score_array_is_the_same_floats_as_score(cls: type[Scorer], seed: int) -> None:
    scorer = plugin(cls)  # type: ignore[type-var]
    candidates = crowd(seed)
    array = scorer.score_array(request(), candidates)
    assert array.dtype == np.float64
    assert array.tolist() == list(scorer.score(request(), candidates))


def test_queue_score_array_all_equal_is_all_ones() -> None:
    candidates = [endpoint(f"e{i}", queue=3) for i in range(200)]
    assert plugin(QueueScorer).score_array(request(), candidates).tolist() == [1.0] * 200


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("seed", range(4))
def test_pick_array_picks_what_pick_picks(count: int, seed: int) -> None:
    rng = random.Random(seed)
    candidates = crowd(seed)
    # few distinct totals, so there are ties to break at random
    totals = [rng.choice([0.0, 1.5, 2.0, 2.0, 7.0]) for _ in candidates]
    totals[rng.randrange(len(totals))] = 7.0
    by_list = plugin(MaxScorePicker, {"maxNumOfEndpoints": count}, context(seed))
    by_array = plugin(MaxScorePicker, {"maxNumOfEndpoints": count}, context(seed))
    for _ in range(20):
        assert by_array.pick_array(request(), candidates, np.array(totals)) == by_list.pick(
            request(), candidates, totals
        )


def test_pick_array_unique_best() -> None:
    candidates = crowd(0)
    totals = np.zeros(len(candidates))
    totals[123] = 0.5
    assert plugin(MaxScorePicker).pick_array(request(), candidates, totals) == [candidates[123]]


@pytest.mark.parametrize("scorer_params", [{}, {"matchLengthWeight": 0.5}])
def test_prefix_score_array_is_the_same_floats_as_score(scorer_params: dict[str, float]) -> None:
    producer, scorer = producer_and_scorer({"blockSizeTokens": 4, "autoTune": False}, scorer_params)
    candidates = crowd(0)
    rng = random.Random(5)
    prompts = [rng.randbytes(40 * rng.randrange(1, 6)) for _ in range(30)]
    for prompt in prompts:  # every prompt placed on two random endpoints
        for chosen in rng.sample(candidates, 2):
            route(producer, prompt, candidates, chosen)
    hits = 0
    for prompt in [*prompts, b"x" * 100, b""]:
        req = request(prompt[: rng.randrange(len(prompt) + 1)] + b"tail")
        producer.prepare(req, candidates)
        array = scorer.score_array(req, candidates)
        assert array.dtype == np.float64
        assert array.tolist() == scorer.score(req, candidates)
        listed_twice = [*candidates, candidates[5]]  # scored per candidate, not by position
        assert scorer.score_array(req, listed_twice).tolist() == scorer.score(req, listed_twice)
        hits += int(np.count_nonzero(array))
    assert hits > len(prompts)  # most prompts matched somewhere


def test_no_hit_lru_score_array_is_the_same_floats_as_score() -> None:
    candidates = crowd(1)
    scorers = []
    for _ in range(2):
        scorer = plugin(NoHitLruScorer)
        scorer.bind_producer(PREFIX_MATCH, "producer")
        scorers.append(scorer)
    by_array, by_list = scorers
    for matched in ({}, {candidates[7]: 2}, {endpoint("outsider"): 3}, {}):
        arrays, lists = request(), request()
        for req in (arrays, lists):
            req.attributes["producer"] = PrefixMatch([1, 2, 3], matched, 16)
        assert by_array.score_array(arrays, candidates).tolist() == by_list.score(lists, candidates)
        assert arrays.attributes.get(by_array.name) == lists.attributes.get(by_list.name)
        chosen = SchedulingResult({"default": ProfileResult([candidates[len(matched) * 9]])}, "default")
        by_array.pre_request(arrays, chosen)
        by_list.pre_request(lists, chosen)
    assert list(by_array.recent) == list(by_list.recent) != []


@pytest.mark.parametrize("seed", range(20))
def test_no_hit_lru_cold_ranks_as_arrays_are_the_lists(seed: int) -> None:
    """Many cold requests over changing candidate lists (subsets, a candidate listed twice, one
    candidate) with a short LRU that forgets: the same floats and the same LRU as `score`."""
    rng = random.Random(seed)
    pool = crowd(seed, 200)
    size = rng.choice([3, 50, 1024])
    by_array, by_list = (plugin(NoHitLruScorer, {"lruSize": size}) for _ in range(2))
    for scorer in (by_array, by_list):
        scorer.bind_producer(PREFIX_MATCH, "producer")
    for _ in range(60):
        candidates = rng.sample(pool, rng.choice([1, 2, 150, 200]))
        if rng.random() < 0.1:
            candidates.append(candidates[0])
        arrays, lists = request(), request()
        for req in (arrays, lists):
            req.attributes["producer"] = PrefixMatch([1, 2, 3], {}, 16)
        assert by_array.score_array(arrays, candidates).tolist() == by_list.score(lists, candidates)
        assert arrays.attributes.get(by_array.name) == lists.attributes.get(by_list.name) is True
        chosen = SchedulingResult({"default": ProfileResult([rng.choice(candidates)])}, "default")
        by_array.pre_request(arrays, chosen)
        by_list.pre_request(lists, chosen)
        assert list(by_array.recent) == list(by_list.recent)


def test_no_hit_lru_warm_rows_are_one_read_only_array_per_length() -> None:
    """A warm request's row is kept for the next of the same length, so no scorer or profile may
    write into it: it is read-only."""
    scorer = plugin(NoHitLruScorer)
    scorer.bind_producer(PREFIX_MATCH, "producer")
    candidates = crowd(2)
    rows = []
    for count in (300, 300, 150):
        req = request()
        req.attributes["producer"] = PrefixMatch([1, 2, 3], {candidates[0]: 1}, 16)
        rows.append(scorer.score_array(req, candidates[:count]))
    assert rows[0] is rows[1]
    assert rows[2].tolist() == [0.5] * 150
    with pytest.raises(ValueError, match="read-only"):
        rows[2][0] = 1.0
