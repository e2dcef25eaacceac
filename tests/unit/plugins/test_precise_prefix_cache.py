"""token-producer, precise-prefix-cache-producer and precise-prefix-cache-scorer: llm-d's configs
load unchanged, the producer feeds prefix-cache-scorer what the engines hold, tokenization
failures fall back without failing the request, and the director awaits tokenization."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datalayer.tokenize import TokenizedPrompt
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.kvevents import BlockStored, prompt_block_hashes
from epp.metrics.exporter import EppMetrics
from epp.params.strict import ConfigError
from epp.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer
from epp.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.plugins.token_producer import TokenProducer
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.prefix import PrefixMatch
from epp.sim.cluster import SimCluster, make_configs
from epp.sim.profiles import TINY_TEST
from epp.sim.tokens import render_chat, tokenize
from tests.unit.plugin_helpers import context, endpoints, plugin
from tests.unit.plugin_helpers import request as make_request

SCORER = (
    "- type: prefix-cache-scorer\n"
    "  parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}\n"
)
UPSTREAM = Path(__file__).parents[2] / "data/upstream/configs"
# Every collected upstream config whose only llm-d-specific plugins are the precise prefix cache's.
LOADING = [
    "llmd-126f65d__guides__precise-prefix-cache-aware__gaie-kv-events__values.yaml",
    "llmd-076e65d__guides__precise-prefix-cache-routing__router__precise-prefix-cache-routing.values.yaml",
    "llmd-bench-8bc9f1d__config__scenarios__guides__precise-prefix-cache-routing.yaml",
    "llmd-bench-v0.5.0__setup__presets__gaie__precise-prefix-cache-aware.yaml",
    "llmd-bench-v0.5.0__setup__presets__gaie__prefix-cache-tracking-config.yaml",
    "llmd-router-ebab687__deploy__config__epp-precise-prefix-cache-config.yaml",
    "llmd-router-ebab687__deploy__config__sim-epp-kvcache-config.yaml",
    "llmd-router-ebab687__deploy__config__sim-epp-no-hit-lru.yaml",
    "llmd-router-ebab687__deploy__config__sim-epp-tokenizer-vllm-http-config.yaml",
    "llmd-router-ebab687__docs__architecture.md__2.yaml",
    "llmd-router-ebab687__test__perf__config__router-configs__precise-prefix.yaml",
    "llmd-router-v0.10.0__deploy__config__sim-epp-kvcache-config.yaml",
    "llmd-router-v0.9.0__deploy__config__sim-epp-no-hit-lru.yaml",
    "llmd-router-v0.9.0__docs__architecture.md__2.yaml",
    "llmd-sched-520af47__deploy__config__epp-precise-prefix-cache-config.yaml",
    "llmd-sched-520af47__deploy__config__sim-epp-kvcache-config.yaml",
    "llmd-sched-520af47__deploy__config__sim-epp-no-hit-lru.yaml",
    "llmd-sched-520af47__deploy__config__sim-epp-tokenizer-vllm-http-config.yaml",
    "llmd-sched-520af47__docs__architecture.md__2.yaml",
    "llmd-sched-v0.2.0__deploy__config__epp-prefix-cache-tracking-config.yaml",
    "llmd-sched-v0.3.0__deploy__config__epp-precise-prefix-cache-config.yaml",
    "llmd-sched-v0.3.0__deploy__config__sim-epp-kvcache-config.yaml",
    "llmd-sched-v0.4.0__deploy__config__epp-precise-prefix-cache-config.yaml",
    "llmd-sched-v0.4.0__deploy__config__sim-epp-kvcache-config.yaml",
    "llmd-sched-v0.5.0__deploy__config__sim-epp-kvcache-config.yaml",
    "llmd-sched-v0.7.0__deploy__config__epp-precise-prefix-cache-config.yaml",
    "llmd-sched-v0.8.0__deploy__config__epp-precise-prefix-cache-config.yaml",
    "llmd-sched-v0.8.0__deploy__config__sim-epp-external-tokenizer-config.yaml",
    "llmd-sched-v0.8.0__deploy__config__sim-epp-kvcache-config.yaml",
    "llmd-sched-v0.8.0__deploy__config__sim-epp-no-hit-lru.yaml",
    "llmd-sched-v0.8.0__docs__architecture.md__2.yaml",
]


@pytest.mark.parametrize("name", LOADING)
def test_llm_d_configs_load_and_build_unchanged(name: str) -> None:
    config = load_config((UPSTREAM / name).read_text())
    _, components = build_director(config, Datastore(), PluginContext(EppMetrics()))
    kinds = {type(p) for p in components.plugins.values()}
    assert kinds & {PrecisePrefixCacheProducer, PrecisePrefixCacheScorer}
    assert TokenProducer in kinds  # configured, or created for the precise plugin (estimate backend)


def test_parameters_as_llm_d_names_them() -> None:
    producer = plugin(
        PrecisePrefixCacheProducer,
        {
            "tokenProcessorConfig": {"blockSize": 64, "hashSeed": "42", "hashAlgorithm": "xxh64"},
            "indexerConfig": {
                "kvBlockIndexConfig": {
                    "inMemoryConfig": {"size": 1000, "podCacheSize": 3},
                    "enableMetrics": True,
                },
                "kvCacheBackendConfigs": [{"name": "gpu", "weight": 1.0}, {"name": "cpu", "weight": 0.5}],
            },
            "kvEventsConfig": {"zmqEndpoint": "tcp://*:5557", "topicFilter": "kv@", "concurrency": 8},
            "speculativeIndexing": False,
            "speculativeTTL": "3s",
        },
    )
    index = producer.cache.index
    assert (producer.cache.block_size, index.size, index.pod_cache_size) == (64, 1000, 3)
    assert index.processor.algorithm == "xxh64" and index.tier_weights == {"gpu": 1.0, "cpu": 0.5}
    assert (
        plugin(PrecisePrefixCacheProducer, {"tokenProcessorConfig": {"blockSizeTokens": 5}}).cache.block_size
        == 5
    )
    with pytest.raises(ConfigError, match="hashAlgorithm"):
        load_config(
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
            "- {type: precise-prefix-cache-producer,\n"
            "   parameters: {tokenProcessorConfig: {hashAlgorithm: md5}}}\n"
            f"{SCORER}"
            "schedulingProfiles: [{name: default, plugins: [{pluginRef: prefix-cache-scorer}]}]\n"
        )


def chat_request(content: str, model: str = "m") -> InferenceRequest:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return InferenceRequest("r", ApiKind.CHAT, "/v1/chat/completions", model, {}, body=body)


def test_producer_reports_what_the_engines_hold_and_the_scorer_reads_it() -> None:
    ctx = context()
    producer = plugin(PrecisePrefixCacheProducer, {"tokenProcessorConfig": {"blockSize": 16}}, ctx)
    scorer = plugin(PrefixCacheScorer, {"prefixMatchInfoProducerName": producer.name}, ctx)
    scorer.bind_producer(next(iter(scorer.consumes)), producer.name)
    producer.bind_producer(next(iter(producer.consumes)), "token-producer")
    pods = endpoints(3)
    tokens = list(range(5000, 5000 + 80))  # five blocks
    producer.apply_kv_events(
        pods[0].hostport, [BlockStored(prompt_block_hashes(tokens, 16, "e"), None, tokens, None)], "m"
    )
    producer.apply_kv_events(
        pods[1].hostport,
        [BlockStored(prompt_block_hashes(tokens[:32], 16, "e"), None, tokens[:32], None)],
        "m",
    )
    request = chat_request("ignored")
    request.attributes["token-producer"] = TokenizedPrompt([*tokens, 1, 2, 3], "render")
    producer.prepare(request, pods)
    match = request.attributes[producer.name]
    assert isinstance(match, PrefixMatch) and match.total_blocks == 5
    assert [match.matched_blocks(e) for e in pods] == [5, 2, 0]
    assert scorer.score(request, pods) == [1.0, 0.4, 0.0]
    producer.endpoint_removed(pods[0])
    producer.prepare(request, pods)
    assert request.attributes[producer.name].matched_blocks(pods[0]) == 0
    # no token ids: no precise data
    bare = chat_request("x")
    producer.prepare(bare, pods)
    assert bare.attributes[producer.name].hashes == []
    # a salted prompt is keyed apart (the salt folded into block 0, as vLLM's extra keys): the
    # unsalted blocks the pods hold do not match it
    salted = chat_request("ignored")
    salted.cache_salt = "tenant"
    salted.attributes["token-producer"] = TokenizedPrompt([*tokens, 1, 2, 3], "render")
    producer.prepare(salted, pods)
    assert salted.attributes[producer.name].total_blocks == 5
    assert [salted.attributes[producer.name].matched_blocks(e) for e in pods] == [0, 0, 0]


def test_legacy_scorer_wraps_producer_and_scorer() -> None:
    scorer = plugin(PrecisePrefixCacheScorer, {"indexerConfig": {"tokenProcessorConfig": {"blockSize": 16}}})
    scorer.bind_producer(next(iter(scorer.consumes)), "tok")
    pods = endpoints(2)
    tokens = list(range(64))
    scorer.apply_kv_events(
        pods[1].hostport, [BlockStored(prompt_block_hashes(tokens, 16, "e"), None, tokens, None)], "m"
    )
    request = chat_request("x")
    request.attributes["tok"] = TokenizedPrompt(tokens, "render")
    scorer.prepare(request, pods)
    assert scorer.score(request, pods) == [0.0, 1.0]


def test_token_producer_backends_and_validation() -> None:
    estimate = plugin(TokenProducer)
    assert estimate.backend == "estimate"
    request = chat_request("hey")
    estimate.prepare(request, [])
    assert request.attributes[estimate.name].source == "estimate"
    assert plugin(TokenProducer, {"modelName": "m"}).backend == "vllm"
    assert (
        plugin(TokenProducer, {"modelName": "m", "udsTokenizerConfig": {"socketFile": "/s"}}).backend == "uds"
    )
    with pytest.raises(ValueError, match="only one of"):
        plugin(TokenProducer, {"estimate": {}, "vllm": {"url": "http://x"}})
    config = load_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- {type: tokenizer, parameters: {modelName: m, vllm: {http: 'http://h:1', timeout: 2s}}}\n"
        "- {type: max-score-picker}\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: max-score-picker}]}]\n"
    )
    spec = config.plugins["tokenizer"]
    assert spec.cls is TokenProducer


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    async with SimCluster(make_configs(1, profile=TINY_TEST, model="m")) as sims:
        yield sims.endpoints[0].url


async def test_director_awaits_tokenization_and_survives_its_failure(sim_url: str) -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- type: token-producer\n"
        f"  parameters: {{modelName: m, vllm: {{url: '{sim_url}', timeout: 2s}}}}\n"
        "- {type: precise-prefix-cache-producer, parameters: {tokenProcessorConfig: {blockSize: 16}}}\n"
        f"{SCORER}"
        "- {type: max-score-picker}\n"
        "schedulingProfiles:\n- name: default\n"
        "  plugins: [{pluginRef: prefix-cache-scorer}, {pluginRef: max-score-picker}]\n"
    )
    datastore = Datastore()
    datastore.replace_all([EndpointSpec(name=f"p{i}", address="10.0.0.1", port=8000 + i) for i in range(3)])
    director, components = build_director(load_config(text), datastore, PluginContext(EppMetrics()))
    producer = components.plugins["precise-prefix-cache-producer"]
    tokens = tokenize(render_chat([("user", "tell me about the ledger " * 20)]))
    tokens = tokens[: len(tokens) // 16 * 16]  # an engine announces full blocks only
    assert isinstance(producer, PrecisePrefixCacheProducer)
    producer.apply_kv_events(
        "10.0.0.1:8002", [BlockStored(prompt_block_hashes(tokens, 16, "e"), None, tokens, None)], "m"
    )
    raw = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "tell me about the ledger " * 20}]}
    )
    headers = {":path": "/v1/chat/completions", ":method": "POST"}
    try:
        for _ in range(5):  # ties broken at random would pick p2 only one time in three
            prepared = await director.prepare_body(raw, headers)
            routed = director.handle_body(raw, headers, None, prepared=prepared)
            assert routed.result.targets[0].name == "p2"
            routed.finish()
        token_producer = components.plugins["token-producer"]
        assert isinstance(token_producer, TokenProducer) and token_producer.remote is not None
        token_producer.remote.url = "http://127.0.0.1:9"  # nothing listens: a connection error
        token_producer.remote._cache = type(token_producer.remote._cache)(1)
        prepared = await director.prepare_body(raw.replace(b"ledger", b"other"), headers)
        routed = director.handle_body(raw, headers, None, prepared=prepared)  # still routed
        routed.finish()
        fallbacks = director.metrics.registry.get_sample_value(
            "llm_d_epp_tokenization_fallbacks_total", {"backend": "vllm", "reason": "connection"}
        )
        assert fallbacks == 1
    finally:
        for plugin_ in components.plugins.values():
            if isinstance(plugin_, TokenProducer):
                await plugin_.stop()


def test_speculative_indexing_marks_the_pick_until_events_arrive() -> None:
    from epp.scheduling.types import ProfileResult, SchedulingResult
    from tests.unit.plugin_helpers import FakeClock

    clock = FakeClock(100.0)
    producer = plugin(
        PrecisePrefixCacheProducer,
        {"speculativeIndexing": True, "speculativeTTL": "2s", "tokenProcessorConfig": {"blockSize": 16}},
        context(clock=clock),
    )
    producer.bind_producer(next(iter(producer.consumes)), "tok")
    pods = endpoints(2)
    request = chat_request("x")
    request.attributes["tok"] = TokenizedPrompt(list(range(64)), "render")
    producer.prepare(request, pods)
    producer.pre_request(request, SchedulingResult({"default": ProfileResult([pods[1]])}, "default"))
    follower = chat_request("x")
    follower.attributes["tok"] = TokenizedPrompt(list(range(64)), "render")
    producer.prepare(follower, pods)
    assert follower.attributes[producer.name].matched_blocks(pods[1]) == 4
    producer.endpoint_removed(pods[1])  # the pod left (and may come back empty): its guesses go
    producer.prepare(follower, pods)
    assert follower.attributes[producer.name].matched_blocks(pods[1]) == 0
    producer.pre_request(request, SchedulingResult({"default": ProfileResult([pods[1]])}, "default"))
    clock.now = 102.5
    producer.cache.index.expire(clock.now)
    producer.prepare(follower, pods)
    assert follower.attributes[producer.name].matched_blocks(pods[1]) == 0


def test_speculative_until_confirmed_lasts_as_long_as_the_request() -> None:
    """With `speculativeUntilConfirmed` the pick holds the prompt however long the request waits
    (no TTL from the pick), until the request ends; then `speculativeTTL` more."""
    from epp.scheduling.types import ProfileResult, SchedulingResult
    from tests.unit.plugin_helpers import FakeClock, pinning_producer

    clock = FakeClock(100.0)
    producer = pinning_producer(clock)
    pods = endpoints(2)

    def matched_on_pick() -> int:
        follower = chat_request("x")
        follower.attributes["tok"] = TokenizedPrompt(list(range(64)), "render")
        producer.prepare(follower, pods)
        return int(follower.attributes[producer.name].matched_blocks(pods[1]))

    request = chat_request("x")
    request.attributes["tok"] = TokenizedPrompt(list(range(64)), "render")
    producer.prepare(request, pods)
    result = SchedulingResult({"default": ProfileResult([pods[1]])}, "default")
    producer.pre_request(request, result)
    clock.now = 160.0  # a minute queued behind a long prefill: still held
    assert matched_on_pick() == 4
    producer.response_complete(request, result, None)
    clock.now = 160.4
    assert matched_on_pick() == 4
    clock.now = 160.5
    assert matched_on_pick() == 0
    producer.response_complete(request, result, None)  # a second call releases nothing
    assert not producer.cache.index._pins


def test_speculative_until_confirmed_reaches_the_index() -> None:
    """`speculativeUntilConfirmed` (ours) is off unless asked for, so llm-d's configs keep its TTL."""
    params = {"speculativeIndexing": True, "tokenProcessorConfig": {"blockSize": 16}}
    llm_d = plugin(PrecisePrefixCacheProducer, params, context())
    ours = plugin(PrecisePrefixCacheProducer, {**params, "speculativeUntilConfirmed": True}, context())
    assert not llm_d.cache.index.confirmation_ends_speculation
    assert ours.cache.index.confirmation_ends_speculation


async def test_per_pod_mode_follows_the_pool() -> None:
    import asyncio

    import zmq
    import zmq.asyncio

    from epp.kvevents import encode_batch

    publisher = zmq.asyncio.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    port = publisher.bind_to_random_port("tcp://127.0.0.1")
    producer = plugin(
        PrecisePrefixCacheProducer,
        {"kvEventsConfig": {"discoverPods": True, "podDiscoveryConfig": {"socketPort": port}}},
    )
    datastore = Datastore()
    datastore.subscribe(on_removed=producer.endpoint_removed)
    await producer.start(datastore)
    try:
        datastore.replace_all([EndpointSpec(name="p0", address="127.0.0.1", port=8000)])
        assert list(producer.cache._per_pod) == ["127.0.0.1:8000"]
        tokens = list(range(32))
        payload = encode_batch(
            [BlockStored(prompt_block_hashes(tokens, 16, "e"), None, tokens, None)], 0.0, 16, {}
        )
        for seq in range(400):  # until the connection is up
            await publisher.send_multipart([b"kv@ignored@m", seq.to_bytes(8, "big"), payload])
            if producer.cache.index.pods():
                break
            await asyncio.sleep(0.01)
        assert producer.cache.index.pods() == ["127.0.0.1:8000"]
        datastore.replace_all([])
        assert producer.cache.index.pods() == [] and not producer.cache._per_pod
    finally:
        await producer.stop()
        publisher.close()


def test_two_epps_fed_the_same_events_route_the_same_requests_the_same_way() -> None:
    from epp.sim.engine import Engine, Request

    text = (UPSTREAM / "llmd-router-ebab687__deploy__config__sim-epp-kvcache-config.yaml").read_text()
    text = text.replace("tcp://0.0.0.0:5557", '""')  # no socket: events are applied directly
    specs = [EndpointSpec(name=f"p{i}", address=f"10.0.0.{i + 1}", port=8000) for i in range(3)]
    directors = []
    for _ in range(2):
        datastore = Datastore()
        datastore.replace_all(specs)
        directors.append(build_director(load_config(text), datastore, context(seed=5)))
    engines = [Engine(TINY_TEST.with_overrides(num_gpu_blocks=40), "m", record_kv_events=True) for _ in specs]
    now = 0.0
    decisions: list[list[str]] = [[], []]
    for n in range(30):
        content = f"group {n % 4} shares this system prompt " * 12 + f"question {n}"
        raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
        headers = {":path": "/v1/chat/completions", ":method": "POST"}
        tokens = tokenize(render_chat([("user", content)]))
        for copy, (director, components) in enumerate(directors):
            producer = components.plugins["token-producer"]
            assert isinstance(producer, TokenProducer)
            producer.sync_tokenizer = lambda _request, tokens=tokens: tokens  # the render API's answer
            routed = director.handle_body(raw, headers, None)
            decisions[copy].append(routed.result.targets[0].name)
            routed.finish()
        engine = engines[int(decisions[0][-1][1:])]
        engine.add(Request(f"r{n}", tokens, 2, now))
        while engine.has_work():
            now = max(now, engine.step(now).end)
            events = engine.drain_kv_events()
            for _, components in directors:
                cache = components.plugins["precise-prefix-cache-producer"]
                assert isinstance(cache, PrecisePrefixCacheProducer)
                cache.apply_kv_events(f"10.0.0.{int(decisions[0][-1][1:]) + 1}:8000", events, "m")
    assert decisions[0] == decisions[1]
    assert len(set(decisions[0])) > 1
    hits = directors[0][0].metrics.registry.get_sample_value("llm_d_epp_kv_cache_index_lookup_hits_total")
    assert hits is not None and hits > 0  # the decisions did follow cached blocks


async def test_token_id_prompts_are_taken_as_they_are() -> None:
    producer = plugin(TokenProducer, {"modelName": "m", "vllm": {"url": "http://127.0.0.1:9"}})
    request = InferenceRequest(
        "r", ApiKind.COMPLETIONS, "/v1/completions", "m", {}, body={"model": "m", "prompt": [[5, 6, 7]]}
    )
    await producer.prepare_async(request)  # no round trip (nothing listens there)
    producer.prepare(request, [])
    assert request.attributes[producer.name] == TokenizedPrompt([5, 6, 7], "prompt")
    assert producer.metrics.tokenization_fallbacks.labels("vllm", "connection")._value.get() == 0
    await producer.stop()


def test_approximate_fallback_scores_the_endpoints_that_publish_no_events() -> None:
    from epp.scheduling.types import ProfileResult, SchedulingResult

    ctx = context()
    producer = plugin(
        PrecisePrefixCacheProducer,
        {"tokenProcessorConfig": {"blockSize": 16}, "approximateFallback": True},
        ctx,
    )
    producer.bind_producer(next(iter(producer.consumes)), "tok")
    scorer = plugin(PrefixCacheScorer, {"prefixMatchInfoProducerName": producer.name}, ctx)
    scorer.bind_producer(next(iter(scorer.consumes)), producer.name)
    pods = endpoints(3)
    tokens = list(range(5000, 5080))  # five blocks
    stored = [BlockStored(prompt_block_hashes(tokens[:32], 16, "e"), None, tokens[:32], None)]
    producer.apply_kv_events(pods[0].hostport, stored, "m")

    def routed_to_second_pod(with_tokens: bool = True) -> InferenceRequest:
        request = make_request("the shared system prompt of this group " * 20)
        if with_tokens:
            request.attributes["tok"] = TokenizedPrompt(tokens, "render")
        producer.prepare(request, pods)
        producer.pre_request(request, SchedulingResult({"default": ProfileResult([pods[1]])}, "default"))
        return request

    def matched(request: InferenceRequest) -> list[int]:
        match = request.attributes[producer.name]
        assert isinstance(match, PrefixMatch)
        return [match.matched_blocks(e) for e in pods]

    assert matched(routed_to_second_pod()) == [2, 0, 0]  # pods[1] got it: only the approximate index knows
    second = routed_to_second_pod()
    assert matched(second) == [2, 5, 0]
    assert scorer.score(second, pods) == [0.4, 1.0, 0.0]
    # without token ids every candidate is matched approximately, and nothing is speculated
    bare = routed_to_second_pod(with_tokens=False).attributes[producer.name]
    assert isinstance(bare, PrefixMatch) and bare.matched_blocks(pods[1]) == bare.total_blocks > 5
    assert producer.cache.index.longest_prefix(bare.hashes, [pods[1].hostport]) == {}
    # once pods[1] publishes, its events rule: it holds none of this prompt
    other = list(range(9000, 9032))
    producer.apply_kv_events(
        pods[1].hostport, [BlockStored(prompt_block_hashes(other, 16, "e"), None, other, None)], "m"
    )
    assert matched(routed_to_second_pod()) == [2, 0, 0]
    # llm-d's behaviour without the option: no approximate index
    assert plugin(PrecisePrefixCacheProducer).fallback is None
