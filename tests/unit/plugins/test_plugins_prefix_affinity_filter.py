"""`prefix-cache-affinity-filter`: stick to endpoints holding the prefix unless they are loaded
enough that a cold endpoint would answer first (TTFT from in-flight tokens / peak prefill rate)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from epp.datalayer.inflight import INFLIGHT_LOAD, RequestLoad
from epp.datastore import Endpoint
from epp.framework import PluginContext
from epp.plugins.prefix_cache_affinity_filter import PrefixCacheAffinityFilter
from epp.requests import InferenceRequest
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from tests.unit.plugin_helpers import context, endpoint, plugin, producer_counts, request


def setup(
    matched: list[int], inflight_tokens: list[int], rng: random.Random | None = None, **params: object
) -> tuple[PrefixCacheAffinityFilter, list[Endpoint], InferenceRequest]:
    ctx = context()
    if rng is not None:
        ctx = PluginContext(ctx.metrics, rng, ctx.clock)
    flt = plugin(PrefixCacheAffinityFilter, params, ctx)
    flt.bind_producer(PREFIX_MATCH, "prefix")
    flt.bind_producer(INFLIGHT_LOAD, "load")
    pool = [endpoint(f"e{i}", inflight_tokens=t) for i, t in enumerate(inflight_tokens)]
    req = request("x" * 640)
    req.attributes["prefix"] = PrefixMatch(list(range(10)), dict(zip(pool, matched, strict=True)), 16)
    req.attributes["load"] = RequestLoad(producer_counts(pool))
    return flt, pool, req


def names(endpoints: list[Endpoint]) -> list[str]:
    return [e.name for e in endpoints]


def test_keeps_only_endpoints_at_or_above_the_threshold() -> None:
    flt, pool, req = setup([8, 10, 3], [0, 0, 0])
    assert names(flt.filter(req, pool)) == ["e0", "e1"]


def test_keeps_all_when_none_is_sticky_or_one_candidate() -> None:
    flt, pool, req = setup([7, 0, 3], [0, 0, 0])
    assert names(flt.filter(req, pool)) == ["e0", "e1", "e2"]
    assert names(flt.filter(req, pool[:1])) == ["e0"]


def test_ttft_gate_breaks_stickiness_when_sticky_endpoints_are_too_loaded() -> None:
    # 15928 tokens/s peak: 400k in-flight tokens ~ 25.1 s TTFT vs 0 s on the cold endpoint.
    flt, pool, req = setup([10, 0], [400_000, 0])
    assert names(flt.filter(req, pool)) == ["e0", "e1"]
    # 200k tokens ~ 12.6 s: within the 18 s default penalty, stay sticky.
    flt, pool, req = setup([10, 0], [200_000, 0])
    assert names(flt.filter(req, pool)) == ["e0"]
    # The gate compares the best of each side and is off with maxTTFTPenaltyMs 0.
    flt, pool, req = setup([10, 0], [400_000, 0], maxTTFTPenaltyMs=0)
    assert names(flt.filter(req, pool)) == ["e0"]


def test_exploration_keeps_everyone() -> None:
    class Low(random.Random):
        def random(self) -> float:
            return 0.0

    flt, pool, req = setup([10, 0], [0, 0], rng=Low(), explorationProbability=0.5)
    assert names(flt.filter(req, pool)) == ["e0", "e1"]


def test_threshold_zero_disables_and_missing_prefix_data_keeps_all() -> None:
    flt, pool, req = setup([10, 0], [0, 0], affinityThreshold=0.0)
    assert names(flt.filter(req, pool)) == ["e0", "e1"]
    flt, pool, req = setup([10, 0], [0, 0])
    req.attributes.pop("prefix")
    assert names(flt.filter(req, pool)) == ["e0", "e1"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ttftSource": "latencyPredictor"}, "needs the latency-predictor sidecar"),
        ({"peakPrefillThroughput": 0.0}, "peakPrefillThroughput must be > 0"),
        ({"affinityThreshold": 1.5}, "less than or equal to 1"),
        ({"explorationProbability": 2.0}, "less than or equal to 1"),
    ],
)
def test_parameters_are_validated(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        plugin(PrefixCacheAffinityFilter, params)
