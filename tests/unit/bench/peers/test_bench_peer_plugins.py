"""The peer routers re-implemented as pickers: SGLang cache_aware, Dynamo KV cost, AIBrix prefix-cache."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import pytest

from epp.bench.peers.aibrix_prefix_cache_picker import AIBrixPrefixCachePicker
from epp.bench.peers.dynamo_kv_router_picker import DynamoKvRouterPicker
from epp.bench.peers.sglang_cache_aware_picker import CharRadixTree, SGLangCacheAwarePicker
from epp.datastore import Endpoint, EndpointSpec
from epp.framework import Plugin, PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.types import ProfileResult, SchedulingResult

P = TypeVar("P", bound=Plugin)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    cls: type[P], params: Mapping[str, Any] | None = None, clock: Clock | None = None, seed: int = 0
) -> P:
    context = PluginContext(EppMetrics(), random.Random(seed), clock or Clock())
    return cls(cls.type_name, cls.Params.model_validate(dict(params or {})), context)


def pool(*inflight: int, block_size: int = 16) -> list[Endpoint]:
    endpoints = []
    for i, count in enumerate(inflight):
        endpoint = Endpoint(EndpointSpec(f"e{i}", f"10.0.0.{i}", 8000))
        endpoint.inflight_requests = count
        endpoint.metrics.cache_block_size = block_size
        endpoints.append(endpoint)
    return endpoints


def request(prompt: str) -> InferenceRequest:
    return InferenceRequest("r", ApiKind.COMPLETIONS, "/v1/completions", "m", prompt=prompt.encode())


def route(picker: Any, req: InferenceRequest, candidates: Sequence[Endpoint]) -> str:
    """Pick, then run the picker's PreRequest as the scheduler would; returns the chosen name."""
    chosen = picker.pick(req, candidates, [0.0] * len(candidates))[0]
    picker.pre_request(req, SchedulingResult({"default": ProfileResult([chosen])}, "default"))
    return str(chosen.name)


# ----- SGLang cache_aware ---------------------------------------------------------------------


def test_char_radix_tree_matches_longest_prefix_and_its_holders() -> None:
    tree = CharRadixTree()
    tree.insert("hello world", "a", 1.0)
    tree.insert("hello there", "b", 2.0)
    assert tree.match("hello world!") == (11, {"a": 1.0})
    assert tree.match("hello t") == (7, {"b": 2.0})
    matched, holders = tree.match("help")
    assert matched == 3 and set(holders) == {"a", "b"}
    assert tree.match("xyz") == (0, {})
    assert tree.chars == {"a": 11, "b": 11}


def test_char_radix_tree_evicts_least_recent_leaves_of_oversized_tenants_only() -> None:
    tree = CharRadixTree()
    tree.insert("aaaa1111", "a", 1.0)
    tree.insert("aaaa2222", "a", 2.0)
    tree.insert("bbbbbb", "b", 0.5)
    assert tree.chars == {"a": 12, "b": 6}
    tree.evict(max_chars=10)
    assert tree.chars == {"a": 8, "b": 6}
    assert tree.match("aaaa1111")[0] == 4, "the older branch went"
    assert tree.match("aaaa2222") == (8, {"a": 2.0})


def test_sglang_routes_by_prefix_when_balanced_and_to_least_loaded_otherwise() -> None:
    picker = make(SGLangCacheAwarePicker)
    endpoints = pool(0, 0, 0)
    prompt = "the same long system prompt " * 10
    first = route(picker, request(prompt + "question one"), endpoints)
    assert first == "e0", "no match: the first least-loaded worker"
    endpoints[0].inflight_requests = 5
    assert route(picker, request(prompt + "question two"), endpoints) == "e0", "prefix wins when balanced"
    assert route(picker, request("something else entirely"), endpoints) == "e1", "no match: least loaded"
    endpoints[0].inflight_requests, endpoints[1].inflight_requests = 100, 10
    assert route(picker, request(prompt + "question three"), endpoints) == "e2", "imbalanced: least loaded"


def test_sglang_needs_strictly_more_than_the_threshold() -> None:
    endpoints = pool(1, 0)
    for text, expected in (("abcdeVWXYZ", "e1"), ("abcdeVWXY", "e0")):  # 5/10 is not above 0.5; 5/9 is
        picker = make(SGLangCacheAwarePicker, {"cacheThreshold": 0.5})
        picker.tree.insert("abcde", "e0", 0.0)
        assert route(picker, request(text), endpoints) == expected


# ----- Dynamo KV router -----------------------------------------------------------------------


def test_dynamo_cost_is_prefill_plus_decode_blocks() -> None:
    picker = make(DynamoKvRouterPicker)
    endpoints = pool(0, 0)
    req = request("x" * 640)  # 160 tokens at 4 chars each: 10 blocks of 16 tokens
    assert picker.costs(req, endpoints) == [160 / 16 + 10, 160 / 16 + 10]
    route(picker, req, endpoints)
    held = next(e for e in endpoints if picker.tree_size[e.name]).name
    costs = dict(zip(["e0", "e1"], picker.costs(request("x" * 640), endpoints), strict=True))
    # the holder: nothing new to prefill but 160 tokens in flight; its 10 active blocks are these
    assert costs[held] == 160 / 16 + 10
    other = "e1" if held == "e0" else "e0"
    assert costs[other] == 160 / 16 + 10


def test_dynamo_prefers_the_overlap_and_forgets_it_after_the_ttl() -> None:
    clock = Clock()
    picker = make(DynamoKvRouterPicker, clock=clock)
    endpoints = pool(0, 0)
    shared = "s" * 2560
    earlier = request(shared + "a" * 64)
    first = route(picker, earlier, endpoints)
    busy = dict(zip(["e0", "e1"], picker.costs(request(shared + "b" * 64), endpoints), strict=True))
    assert busy[first] > busy["e1" if first == "e0" else "e0"], "still serving it: the other is cheaper"
    picker.response_complete(earlier, SchedulingResult({}, "default"), None)
    assert route(picker, request(shared + "b" * 64), endpoints) == first, "done: the overlap wins"
    clock.now = 121.0
    other_counts = Counter(
        route(make(DynamoKvRouterPicker, clock=clock, seed=s), request(shared + "c" * 64), endpoints)
        for s in range(20)
    )
    assert len(other_counts) == 2, "fresh pickers know nothing: ties broken at random"
    assert picker.overlaps(picker_hashes(picker, shared, endpoints), {"e0", "e1"}) == {}


def picker_hashes(picker: DynamoKvRouterPicker, prompt: str, endpoints: list[Endpoint]) -> list[int]:
    req = request(prompt)
    picker.costs(req, endpoints)
    hashes: list[int] = req.attributes[f"{picker.name}/pending"][0]
    return hashes


def test_dynamo_releases_load_when_the_response_ends() -> None:
    picker = make(DynamoKvRouterPicker)
    endpoints = pool(0, 0)
    req = request("y" * 320)
    worker = route(picker, req, endpoints)
    assert picker.prefill_tokens[worker] == 80 and len(picker.active_blocks[worker]) == 5
    picker.response_complete(req, SchedulingResult({}, "default"), None)
    assert picker.prefill_tokens[worker] == 0 and not picker.active_blocks[worker]


# ----- AIBrix prefix-cache --------------------------------------------------------------------


def test_aibrix_match_is_percent_of_full_blocks_held_in_order() -> None:
    picker = make(AIBrixPrefixCachePicker, {"blockSize": 4})
    assert len(picker.prompt_hashes(request("abcdefghij"))) == 2, "the partial tail is not a block"
    picker.index.add(picker.prompt_hashes(request("aaaabbbbcccc")), "e0", 0.0)
    hashes = picker.prompt_hashes(request("aaaabbbbddddeeee"))
    assert picker.index.match(hashes, {"e0", "e1"}, 1.0) == {"e0": 50}
    assert picker.index.match(hashes, {"e0"}, 1201.0) == {}, "idle for 20 minutes: forgotten"


def test_aibrix_load_gate_and_deviation_limit() -> None:
    prompt = "p" * 512
    picker = make(AIBrixPrefixCachePicker)
    endpoints = pool(0, 0, 0, 0)
    assert route(picker, request(prompt), endpoints) in {"e0", "e1", "e2", "e3"}
    holder = next(
        e for e in endpoints if picker.index.match(picker.prompt_hashes(request(prompt)), {e.name}, 0)
    )
    holder.inflight_requests = 10  # mean 2.5, pstdev 4.33: limit 2.5 + 2 x 4.33 = 11.2
    assert route(picker, request(prompt + "q"), endpoints) == holder.name
    holder.inflight_requests = 17  # 17 - 0 > 16: only the idle pods remain candidates
    assert route(picker, request(prompt + "r"), endpoints) != holder.name
    strict = make(AIBrixPrefixCachePicker, {"standardDeviationFactor": 0})
    strict.index.add(strict.prompt_hashes(request(prompt)), holder.name, 0.0)
    holder.inflight_requests = 10  # limit = mean 2.5: the holder is too busy
    assert route(strict, request(prompt), endpoints) != holder.name


@pytest.mark.parametrize("cls", [SGLangCacheAwarePicker, DynamoKvRouterPicker, AIBrixPrefixCachePicker])
def test_removed_endpoints_are_forgotten(cls: type[Any]) -> None:
    picker = make(cls)
    endpoints = pool(0, 0)
    route(picker, request("z" * 1024), endpoints)
    for endpoint in endpoints:
        picker.endpoint_removed(endpoint)
    endpoints = pool(0, 0)
    for endpoint in endpoints[:1]:
        endpoint.inflight_requests = 1
    assert route(picker, request("z" * 1024), endpoints) == "e1", "no stale affinity: least loaded"
