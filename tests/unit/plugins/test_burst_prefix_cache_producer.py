"""burst-prefix-cache-producer: llm-d router's placement of a window's prompt-sharing requests
(identical groups kept whole, `maxPerReplica` spill, prefix-sharing units within the fair share,
`balanceBy: tokens`), its parameter checks, and the director path: requests of one window wait for
it to close, then each group lands on one replica."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datalayer.tokenize import TokenizedPrompt
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.plugins.burst_prefix_cache_producer import (
    BurstPrefixCacheProducer,
    BurstPrefixParams,
    _Entry,
    _Window,
    place_window,
)
from epp.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.plugins.token_producer import TokenProducer
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.prefix import PrefixMatch
from tests.unit.plugin_helpers import context, endpoints, plugin

CONFIG = (
    Path(__file__).parents[2]
    / "data/upstream/configs/llmd-router-ebab687__deploy__config__epp-burst-prefix-cache-config.yaml"
)


def group(n: int, *hashes: int) -> list[_Entry]:
    return [_Entry(tuple(hashes), WINDOW) for _ in range(n)]


WINDOW = _Window()


def place(
    entries: Sequence[_Entry], replicas: Sequence[Endpoint], by_tokens: bool = False, **params: Any
) -> Counter[str]:
    place_window(entries, replicas, BurstPrefixParams.model_validate(params), by_tokens)
    names = {e.hostport: e.name for e in replicas}
    return Counter(names[e.assigned] for e in entries if e.assigned is not None)


def where(entries: Sequence[_Entry]) -> set[str | None]:
    return {e.assigned for e in entries}


def test_an_identical_group_goes_whole_to_one_replica() -> None:
    assert place(group(8, 1, 2, 3), endpoints(4)) == {"e0": 8}


def test_max_per_replica_fills_one_replica_then_spills_to_the_least_loaded() -> None:
    assert place(group(8, 1, 2, 3), endpoints(4), maxPerReplica=2) == dict.fromkeys(
        ("e0", "e1", "e2", "e3"), 2
    )
    assert place(group(8, 1, 2, 3), endpoints(4), maxPerReplica=4) == {"e0": 4, "e1": 4}
    # More members than maxPerReplica x replicas: every one is still placed, evenly.
    assert place(group(8, 1, 2, 3), endpoints(2), maxPerReplica=2) == {"e0": 4, "e1": 4}


def test_lone_and_empty_requests_get_no_affinity() -> None:
    lone, empty = group(1, 1, 2, 3), group(2)
    assert place(lone + empty, endpoints(2)) == {}
    pair, unrelated = group(2, 1, 2, 3), group(1, 5, 5, 5)
    place(pair + unrelated, endpoints(2), minColocateBlocks=2)
    assert len(where(pair)) == 1 and where(unrelated) == {None}


def test_distinct_groups_spread_and_ties_go_to_fewer_running_requests() -> None:
    a, b = group(8, 1, 2, 3), group(8, 9, 9, 9)
    assert place(a + b, endpoints(4)) == {"e0": 8, "e1": 8}
    busy = endpoints(2)
    busy[0].metrics.running_requests_size = 5
    assert place(group(2, 4, 4), busy) == {"e1": 2}


def test_prefix_sharing_groups_colocate_within_the_fair_share() -> None:
    x1, x2, y1, y2 = group(2, 1, 2, 3), group(2, 1, 2, 4), group(2, 7, 8, 5), group(2, 7, 8, 6)
    assert place(x1 + x2 + y1 + y2, endpoints(2), minColocateBlocks=2) == {"e0": 4, "e1": 4}
    assert where(x1) == where(x2) and where(y1) == where(y2) and where(x1) != where(y1)
    # Four groups sharing the same two blocks would all match one replica; the share spreads them.
    units = [group(2, 1, 2, n) for n in range(3, 7)]
    assert place([e for u in units for e in u], endpoints(4), minColocateBlocks=2) == dict.fromkeys(
        ("e0", "e1", "e2", "e3"), 2
    )
    # Below the threshold the families are placed by load alone.
    x1, x2, y1, y2 = group(2, 1, 2, 3), group(2, 1, 2, 4), group(2, 7, 8, 5), group(2, 7, 8, 6)
    place(x1 + x2 + y1 + y2, endpoints(2), minColocateBlocks=3)
    assert where(x1) != where(x2)


def test_prefix_sharing_lone_requests_attach_to_their_group_or_to_each_other() -> None:
    gx, sx, gy, sy = group(2, 1, 2, 3), group(1, 1, 2, 8), group(2, 7, 8, 5), group(1, 7, 8, 9)
    assert place(gx + sx + gy + sy, endpoints(2), minColocateBlocks=2) == {"e0": 3, "e1": 3}
    assert where(gx) == where(sx) and where(gy) == where(sy)
    singles = [e for n in range(3, 7) for e in group(1, 1, 2, n)]
    assert place(singles, endpoints(2), minColocateBlocks=2) == {"e0": 2, "e1": 2}
    assert place(group(4, 1, 2, 3) + group(4, 9, 9, 9), endpoints(1), minColocateBlocks=2) == {"e0": 8}


def test_balance_by_tokens_counts_prefix_blocks_and_discounts_what_a_replica_holds() -> None:
    long, short1, short2 = group(2, 1, 2, 3, 4), group(2, 5), group(2, 6)
    place(long + short1 + short2, endpoints(2))
    assert where(long) == where(short2)  # by requests: a short unit joins the long one
    long, short1, short2 = group(2, 1, 2, 3, 4), group(2, 5), group(2, 6)
    place(long + short1 + short2, endpoints(2), by_tokens=True)
    assert where(long) != where(short1) and where(short1) == where(short2)
    shared = [group(2, *range(1, 10), n) for n in (10, 11, 12)]
    place([e for u in shared for e in u], endpoints(2), by_tokens=True, minColocateBlocks=9)
    assert where(shared[0]) == where(shared[1]) == where(shared[2])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"windowDurationMs": 0}, "greater than or equal to 1"),
        ({"windowDurationMs": 10_001}, "less than or equal to 10000"),
        ({"maxPerReplica": 0}, "maxPerReplica must be -1"),
        ({"maxBatchSize": 0}, "maxBatchSize must be -1"),
        ({"blockSizeTokens": 64, "maxPrefixTokensToMatch": 10}, "maxPrefixTokensToMatch must be 0 or >="),
        ({"minColocateBlocks": -1}, "greater than or equal to 0"),
        ({"balanceBy": "bytes"}, "'requests', 'tokens'"),
    ],
)
def test_parameters_are_checked_as_upstream(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BurstPrefixParams.model_validate(params)
    defaults = BurstPrefixParams()
    assert (defaults.window_duration_ms, defaults.max_per_replica, defaults.block_size_tokens) == (
        100,
        -1,
        64,
    )
    assert (defaults.max_batch_size, defaults.balance_by, defaults.max_blocks()) == (1000, "requests", 2048)
    assert BurstPrefixParams.model_validate({"maxPrefixTokensToMatch": 640}).max_blocks() == 10


def completion(tokens: list[int], model: str = "m") -> InferenceRequest:
    body = {"model": model, "prompt": tokens}
    request = InferenceRequest("r", ApiKind.COMPLETIONS, "/v1/completions", model, {}, body=body)
    request.attributes["tok"] = TokenizedPrompt(tokens, "prompt")
    return request


async def test_requests_wait_for_their_window_and_match_fully_on_the_assigned_replica() -> None:
    producer = plugin(BurstPrefixCacheProducer, {"windowDurationMs": 20, "blockSizeTokens": 4}, context())
    producer.bind_producer(next(iter(producer.consumes)), "tok")
    pods = endpoints(3)
    same = [completion(list(range(10))) for _ in range(3)]
    lone = completion([7, 7, 7])  # shorter than a block: one block
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(producer.prepare_async(r) for r in [*same, lone]))
    assert loop.time() - started >= 0.02
    for request in [*same, lone]:
        producer.prepare(request, pods)
    matches = [r.attributes[producer.name] for r in same]
    assert all(isinstance(m, PrefixMatch) and m.total_blocks == 3 for m in matches)  # 4 + 4 + 2 tokens
    assert [m.matched_blocks(pods[0]) for m in matches] == [3, 3, 3]
    assert lone.attributes[producer.name].total_blocks == 1 and not lone.attributes[producer.name].matched
    scorer = plugin(PrefixCacheScorer, {"prefixMatchInfoProducerName": producer.name})
    scorer.bind_producer(next(iter(scorer.consumes)), producer.name)
    assert scorer.score(same[0], pods) == [1.0, 0.0, 0.0]
    # Another model's identical token ids are another prompt.
    other = completion(list(range(10)), model="n")
    await producer.prepare_async(other)
    producer.prepare(other, pods)
    assert other.attributes[producer.name].hashes != matches[0].hashes


async def test_a_full_window_leaves_the_excess_without_affinity() -> None:
    producer = plugin(BurstPrefixCacheProducer, {"windowDurationMs": 10, "maxBatchSize": 2}, context())
    producer.bind_producer(next(iter(producer.consumes)), "tok")
    requests = [completion(list(range(80))) for _ in range(3)]
    await asyncio.gather(*(producer.prepare_async(r) for r in requests))
    pods = endpoints(2)
    for request in requests:
        producer.prepare(request, pods)
    assert [bool(r.attributes[producer.name].matched) for r in requests] == [True, True, False]


async def test_the_upstream_config_colocates_each_burst_through_the_director() -> None:
    datastore = Datastore()
    datastore.replace_all([EndpointSpec(name=f"p{i}", address="10.0.0.1", port=8000 + i) for i in range(4)])
    director, components = build_director(load_config(CONFIG.read_text()), datastore, context(seed=1))
    assert director.prepares_async
    headers = {":path": "/v1/completions", ":method": "POST"}

    async def route(tokens: list[int]) -> str:
        raw = orjson.dumps({"model": "m", "prompt": tokens, "max_tokens": 1})
        prepared = await director.prepare_body(raw, headers)
        routed = director.handle_body(raw, headers, None, prepared=prepared)
        routed.finish()
        return routed.result.targets[0].name

    a, b = list(range(300)), list(range(1000, 1300))
    try:
        picks = await asyncio.gather(*(route(a if n % 2 else b) for n in range(16)))
        by_prompt = [{picks[n] for n in range(16) if n % 2 == parity} for parity in (0, 1)]
        assert all(len(p) == 1 for p in by_prompt) and by_prompt[0] != by_prompt[1]
        # A later window is placed afresh; its pair still lands together.
        assert len(set(await asyncio.gather(route(b), route(b)))) == 1
    finally:
        token_producer = components.plugins["token-producer"]
        assert isinstance(token_producer, TokenProducer)
        await token_producer.stop()
