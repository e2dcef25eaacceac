"""The approximate prefix cache: block hashing, the index, the producer and prefix-cache-scorer
(gie-epp.md 3.5, llm-d.md 1.6 and 3)."""

from __future__ import annotations

import time
from types import MappingProxyType

import orjson
import pytest
from xxhash import xxh64_intdigest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.prefix import (
    PREFIX_MATCH,
    ChainCache,
    PrefixMatch,
    block_hashes,
    model_seed,
    prompt_bytes,
)
from epp.scheduling.prefix.index import CompiledPrefixIndex, PrefixIndex, PythonPrefixIndex
from epp.scheduling.prefix.params import PrefixIndexParams
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import context, endpoint, endpoints, plugin, request

BLOCK = 64  # 16 tokens x 4 characters
TEXT = bytes(range(256)) * 4  # 1024 bytes: 16 full blocks


def test_hashes_full_blocks_and_the_trailing_partial_one() -> None:
    assert len(block_hashes(TEXT, 1, BLOCK, 256)) == 16
    assert len(block_hashes(TEXT + b"tail", 1, BLOCK, 256)) == 17
    assert block_hashes(TEXT[: BLOCK - 1], 1, BLOCK, 256) == []


def test_hashes_are_chained_so_equal_hashes_mean_equal_prefixes() -> None:
    base = block_hashes(TEXT, 1, BLOCK, 256)
    changed_first = block_hashes(b"X" + TEXT[1:], 1, BLOCK, 256)
    changed_last = block_hashes(TEXT[:-1] + b"X", 1, BLOCK, 256)
    assert not set(base) & set(changed_first)
    assert changed_last[:-1] == base[:-1] and changed_last[-1] != base[-1]


@pytest.mark.parametrize(("data", "max_blocks"), [(TEXT + b"tail", 0), (TEXT + b"tail", 5), (TEXT, 16)])
def test_each_hash_is_its_block_hashed_with_the_previous_hash_as_seed(data: bytes, max_blocks: int) -> None:
    """The values, not only their properties: the one-call chain equals the definition."""
    expected, previous = [], 7
    for start in range(0, min(len(data), BLOCK * (max_blocks or len(data))), BLOCK):
        previous = xxh64_intdigest(data[start : start + BLOCK], previous)
        expected.append(previous)
    assert block_hashes(data, 7, BLOCK, max_blocks) == expected


def test_hash_chain_starts_from_model_and_cache_salt() -> None:
    seeds = {model_seed("m"), model_seed("m", "tenant-a"), model_seed("m", "tenant-b"), model_seed("other")}
    assert len(seeds) == 4
    assert block_hashes(TEXT, model_seed("m"), BLOCK, 256) != block_hashes(
        TEXT, model_seed("other"), BLOCK, 256
    )


def test_max_blocks_truncates_and_zero_means_no_limit() -> None:
    assert len(block_hashes(TEXT, 1, BLOCK, 4)) == 4
    assert block_hashes(TEXT, 1, BLOCK, 4) == block_hashes(TEXT, 1, BLOCK, 256)[:4]
    assert len(block_hashes(TEXT * 2, 1, BLOCK, 0)) == 32


def test_token_id_prompts_hash_their_ids_little_endian() -> None:
    req = request(token_ids=[1, 2, 0x01020304])
    assert prompt_bytes(req) == b"\x01\x00\x00\x00\x02\x00\x00\x00\x04\x03\x02\x01"
    assert prompt_bytes(request(token_ids=[2**40])) == b""
    assert prompt_bytes(request("text")) == b"text"


# --- index -----------------------------------------------------------------------------------------


# Both implementations of the same semantics: the C tables (built at install; `python setup.py
# build_ext --inplace` in a work tree) and the pure-Python fallback.
INDEXES = pytest.mark.parametrize("kind", [CompiledPrefixIndex, PythonPrefixIndex])


def names(counts: dict[Endpoint, int]) -> dict[str, int]:
    return {e.name: n for e, n in counts.items()}


@INDEXES
def test_match_walks_until_the_first_block_nobody_holds(kind: type[PrefixIndex]) -> None:
    index = kind()
    a, b = endpoints(2)
    index.add(a, [1, 2, 3, 4], 100)
    index.add(b, [1, 2, 9], 100)
    assert names(index.match([1, 2, 3, 4, 5])) == {"e0": 4, "e1": 2}
    assert names(index.match([7, 1, 2])) == {}
    # Greedy, as GIE: b holds 9 but not 3; the walk stops at 5 which nobody holds.
    index.add(b, [10], 100)
    assert names(index.match([1, 10, 5, 2])) == {"e0": 1, "e1": 2}


@INDEXES
def test_lru_evicts_least_recently_used_beyond_capacity(kind: type[PrefixIndex]) -> None:
    index = kind()
    a = endpoint("a")
    index.add(a, [1, 2, 3], 4)
    index.add(a, [1], 4)  # refresh 1: now 2 is the oldest
    index.add(a, [5, 6], 4)
    assert names(index.match([1])) == {"a": 1}
    assert names(index.match([2])) == {} and names(index.match([3])) == {"a": 1}
    assert index.blocks_held(a) == 4
    assert index.size() == 4


@INDEXES
def test_eviction_keeps_blocks_other_endpoints_hold(kind: type[PrefixIndex]) -> None:
    index = kind()
    a, b = endpoints(2)
    index.add(a, [1, 2], 10)
    index.add(b, [1], 1)
    index.add(b, [3], 1)
    assert names(index.match([1, 2])) == {"e0": 2}
    assert names(index.match([3])) == {"e1": 1}


@INDEXES
def test_removing_an_endpoint_forgets_it_and_recycles_its_slot(kind: type[PrefixIndex]) -> None:
    index = kind()
    a, b, c = endpoints(3)
    index.add(a, [1, 2], 10)
    index.add(b, [1], 10)
    index.remove_endpoint(a)
    index.remove_endpoint(a)
    assert names(index.match([1, 2])) == {"e1": 1}
    assert index.endpoints() == [b] and index.size() == 1
    index.add(c, [2], 10)
    assert names(index.match([1, 2])) == {"e1": 1, "e2": 1}


@INDEXES
def test_rekey_hands_an_endpoints_blocks_to_another(kind: type[PrefixIndex]) -> None:
    index = kind()
    a, b, c = endpoints(3)
    index.add(a, [1, 2], 10)
    index.add(b, [1, 3], 10)  # b's own blocks give way to a's
    index.rekey(a, b)
    assert names(index.match([1, 2])) == {"e1": 2} and names(index.match([3])) == {}
    assert index.endpoints() == [b] and index.blocks_held(b) == 2
    index.rekey(c, b)  # c holds nothing: nothing changes
    assert index.blocks_held(b) == 2


# --- producer and scorer ---------------------------------------------------------------------------


def producer_and_scorer(
    producer_params: dict | None = None, scorer_params: dict | None = None, metrics: EppMetrics | None = None
) -> tuple[ApproxPrefixCacheProducer, PrefixCacheScorer]:
    ctx = context(metrics=metrics)
    producer = plugin(ApproxPrefixCacheProducer, producer_params, ctx)
    scorer = plugin(PrefixCacheScorer, scorer_params, ctx)
    scorer.bind_producer(PREFIX_MATCH, producer.name)
    return producer, scorer


def route(
    producer: ApproxPrefixCacheProducer, prompt: bytes, candidates: list[Endpoint], chosen: Endpoint
) -> PrefixMatch:
    req = request(prompt)
    producer.prepare(req, candidates)
    producer.pre_request(req, SchedulingResult({"default": ProfileResult([chosen])}, "default"))
    match = req.attributes[producer.name]
    assert isinstance(match, PrefixMatch)
    return match


def test_scorer_scores_the_matched_share_of_the_prompt() -> None:
    producer, scorer = producer_and_scorer({"autoTune": False})
    candidates = endpoints(3)
    route(producer, TEXT, candidates, candidates[1])
    req = request(TEXT[: 8 * BLOCK] + bytes(8 * BLOCK))  # shares the first half of the blocks
    producer.prepare(req, candidates)
    assert scorer.score(req, candidates) == [0.0, 0.5, 0.0]


def test_all_scores_zero_for_short_prompts_and_missing_data() -> None:
    producer, scorer = producer_and_scorer()
    candidates = endpoints(2)
    short = request("too short for one block")
    producer.prepare(short, candidates)
    assert scorer.score(short, candidates) == [0.0, 0.0]
    assert scorer.score(request(TEXT), candidates) == [0.0, 0.0]


def test_match_length_weight_blends_absolute_length() -> None:
    producer, scorer = producer_and_scorer(
        {"autoTune": False}, {"matchLengthWeight": 0.5, "matchLengthScaleTokens": 512}
    )
    candidates = endpoints(2)
    route(producer, TEXT, candidates, candidates[0])
    req = request(TEXT[: 8 * BLOCK] + bytes(24 * BLOCK))  # 8 of 32 blocks cached on e0: 128 tokens
    producer.prepare(req, candidates)
    expected = 0.5 * min(1.0, 8 * 16 / 512) ** 2 + 0.5 * (8 / 32)
    assert scorer.score(req, candidates) == [pytest.approx(expected), 0.0]


def test_autotune_takes_block_size_from_first_candidate_and_capacity_from_chosen() -> None:
    producer, _ = producer_and_scorer()
    first = endpoint("first", block_size=32, num_blocks=3)
    other = endpoint("other", block_size=8, num_blocks=1000)
    match = route(producer, TEXT, [first, other], first)
    assert match.block_size_tokens == 32 and match.total_blocks == 8  # 1024 bytes / (32 x 4)
    assert producer.index.blocks_held(first) == 3
    fallback = route(producer, TEXT, [endpoint("no-metrics")], other)
    assert fallback.block_size_tokens == 16


def test_without_autotune_configured_sizes_apply() -> None:
    producer, _ = producer_and_scorer({"autoTune": False, "blockSizeTokens": 8, "lruCapacityPerServer": 5})
    chosen = endpoint("a", block_size=64, num_blocks=1000)
    match = route(producer, TEXT, [chosen], chosen)
    assert match.block_size_tokens == 8 and match.total_blocks == 32
    assert producer.index.blocks_held(chosen) == 5


def test_deprecated_character_block_size_and_token_limit() -> None:
    producer, _ = producer_and_scorer({"autoTune": False, "blockSize": 128, "maxPrefixTokensToMatch": 96})
    match = route(producer, TEXT, endpoints(1), endpoints(1)[0])
    assert match.block_size_tokens == 32 and match.total_blocks == 3


def test_pre_request_records_primary_and_prefill_targets_before_forwarding() -> None:
    producer, _ = producer_and_scorer({"autoTune": False})
    decode, prefill, other = endpoints(3)
    req = request(TEXT)
    producer.prepare(req, [decode, prefill, other])
    result = SchedulingResult(
        {"decode": ProfileResult([decode, other]), "prefill": ProfileResult([prefill])}, "decode"
    )
    producer.pre_request(req, result)
    again = request(TEXT)
    producer.prepare(again, [decode, prefill, other])
    assert again.attributes[producer.name].matched == {decode: 16, prefill: 16}


def test_removed_endpoints_are_purged() -> None:
    producer, _ = producer_and_scorer({"autoTune": False})
    gone = endpoint("gone")
    route(producer, TEXT, [gone], gone)
    producer.endpoint_removed(gone)
    assert producer.index.endpoints() == [] and producer.index.size() == 0


def test_cache_salt_and_model_isolate_prefixes() -> None:
    producer, _ = producer_and_scorer({"autoTune": False})
    a = endpoint("a")
    route(producer, TEXT, [a], a)
    for other in (request(TEXT, cache_salt="tenant"), request(TEXT, model="other-model")):
        producer.prepare(other, [a])
        assert other.attributes[producer.name].matched == {}


def test_prefix_metrics_are_recorded() -> None:
    metrics = EppMetrics()
    producer, _ = producer_and_scorer({"autoTune": False}, metrics=metrics)
    a = endpoint("a")
    route(producer, TEXT, [a], a)
    route(producer, TEXT[: 8 * BLOCK] + bytes(8 * BLOCK), [a], a)
    sample = metrics.registry.get_sample_value
    assert sample("inference_extension_prefix_indexer_hit_ratio_count") == 2
    assert sample("inference_extension_prefix_indexer_hit_ratio_sum") == pytest.approx(0.5)
    assert sample("inference_extension_prefix_indexer_hit_bytes_sum") == 8 * BLOCK
    assert sample("inference_extension_prefix_indexer_size") == 24


# --- chain cache -----------------------------------------------------------------------------------


SPAN = ChainCache.SPAN_BLOCKS * BLOCK


@pytest.mark.parametrize("length", [BLOCK - 1, BLOCK, SPAN - 1, SPAN, SPAN + 1, 3 * SPAN + BLOCK + 5])
@pytest.mark.parametrize("max_blocks", [0, 1, ChainCache.SPAN_BLOCKS, ChainCache.SPAN_BLOCKS + 3, 256])
def test_chain_cache_gives_block_hashes_values(length: int, max_blocks: int) -> None:
    data = (TEXT * (length // len(TEXT) + 1))[:length]
    cache = ChainCache()
    for _ in range(2):  # cold, then from the cache
        assert cache.block_hashes(data, 7, BLOCK, max_blocks) == block_hashes(data, 7, BLOCK, max_blocks)


def test_chain_cache_shares_a_prefix_and_tells_seeds_and_block_sizes_apart() -> None:
    cache = ChainCache()
    prefix = TEXT * (2 * SPAN // len(TEXT))
    first = cache.block_hashes(prefix + b"a" * 300, 7, BLOCK, 0)
    second = cache.block_hashes(prefix + b"b" * 300, 7, BLOCK, 0)
    shared = 2 * ChainCache.SPAN_BLOCKS
    assert all(a is b for a, b in zip(first[:shared], second[:shared], strict=True))  # the same objects
    assert second == block_hashes(prefix + b"b" * 300, 7, BLOCK, 0)
    assert cache.block_hashes(prefix, 8, BLOCK, 0) == block_hashes(prefix, 8, BLOCK, 0)
    assert cache.block_hashes(prefix, 7, BLOCK // 2, 0) == block_hashes(prefix, 7, BLOCK // 2, 0)


def test_chain_cache_forgets_the_least_recently_used_spans_beyond_its_capacity() -> None:
    cache = ChainCache(capacity=2)
    spans = [bytes([i]) * SPAN for i in range(3)]
    kept = cache.block_hashes(spans[0], 1, BLOCK, 0)
    cache.block_hashes(spans[1], 1, BLOCK, 0)
    assert cache.block_hashes(spans[0], 1, BLOCK, 0)[0] is kept[0]  # a hit refreshes span 0
    cache.block_hashes(spans[2], 1, BLOCK, 0)  # evicts span 1, the least recently used
    assert cache.block_hashes(spans[0], 1, BLOCK, 0)[0] is kept[0]
    assert len(cache) == 2


def test_chain_cache_keeps_the_objects_of_a_span_it_remembers_after_a_forgotten_one() -> None:
    cache = ChainCache(capacity=2)
    prompt = bytes(range(256)) * (2 * SPAN // 256)
    first = cache.block_hashes(prompt, 1, BLOCK, 0)
    cache.block_hashes(b"x" * SPAN, 1, BLOCK, 0)  # forgets the prompt's first span
    again = cache.block_hashes(prompt, 1, BLOCK, 0)
    assert again == first == block_hashes(prompt, 1, BLOCK, 0)
    third = cache.block_hashes(prompt, 1, BLOCK, 0)
    second_span = slice(ChainCache.SPAN_BLOCKS, None)
    assert all(a is b for a, b in zip(third[second_span], first[second_span], strict=True))


PREFIX_LABELS = {"plugin_name": "approx-prefix-cache-producer", "plugin_type": "approx-prefix-cache-producer"}


def test_llm_d_prefix_metrics_are_by_plugin_after_requests_through_the_director() -> None:
    """llm-d-router ebab687 labels `llm_d_epp_prefix_indexer_*` by the plugin keeping the index;
    GIE's stay unlabelled. Three requests of one prompt through GIE's default profile: the
    first matches nothing, the next two the whole prompt."""
    metrics = EppMetrics(aliases=["llm-d"])
    store = Datastore()
    store.synced = True
    for i in range(2):
        spec = EndpointSpec(f"p{i}", f"10.0.0.{i + 1}", 8000, MappingProxyType({}), models=frozenset({"m"}))
        store.upsert(spec).metrics.update_time = time.monotonic()
    director, _ = build_director(load_config(), store, PluginContext(metrics))
    body = orjson.dumps({"model": "m", "prompt": "hello world " * 100})
    for _ in range(3):
        director.handle_body(body, {":path": "/v1/completions"}, None).finish()
    sample = metrics.registry.get_sample_value
    assert sample("llm_d_epp_prefix_indexer_hit_ratio_count", PREFIX_LABELS) == 3
    assert sample("llm_d_epp_prefix_indexer_hit_ratio_sum", PREFIX_LABELS) == 2
    matched = sample("inference_extension_prefix_indexer_hit_bytes_sum")
    assert matched and sample("llm_d_epp_prefix_indexer_hit_bytes_sum", PREFIX_LABELS) == matched
    size = sample("inference_extension_prefix_indexer_size")
    assert size and sample("llm_d_epp_prefix_indexer_size", PREFIX_LABELS) == size
    assert sample("inference_extension_prefix_indexer_hit_ratio_count") == 3


def test_two_prefix_indexes_are_told_apart_by_plugin_name() -> None:
    metrics = EppMetrics(aliases=["llm-d"])
    params = PrefixIndexParams.model_validate({"autoTune": False})
    first = ApproxPrefixCacheProducer("first", params, context(metrics=metrics))
    second = ApproxPrefixCacheProducer("second", params, context(metrics=metrics))
    a = endpoint("a")
    route(first, TEXT, [a], a)
    route(first, TEXT, [a], a)
    route(second, TEXT, [a], a)
    sample = metrics.registry.get_sample_value
    kind = {"plugin_type": "approx-prefix-cache-producer"}
    assert sample("llm_d_epp_prefix_indexer_hit_ratio_sum", {"plugin_name": "first", **kind}) == 1
    assert sample("llm_d_epp_prefix_indexer_hit_ratio_count", {"plugin_name": "second", **kind}) == 1
    assert sample("llm_d_epp_prefix_indexer_size", {"plugin_name": "second", **kind}) == 16
