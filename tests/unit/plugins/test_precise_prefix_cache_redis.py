"""`precise-prefix-cache-producer` with llm-d's `redisConfig`: two EPPs sharing one real Redis route
by the events only one of them received, and an EPP whose Redis is gone still routes every
request (the precise scorer scores nothing)."""

from __future__ import annotations

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datalayer.kvblocks_redis import RedisKVBlockIndex
from epp.datastore import Datastore, EndpointSpec
from epp.kvevents import BlockStored, prompt_block_hashes
from epp.params.strict import ConfigError
from epp.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer
from epp.plugins.token_producer import TokenProducer
from epp.replicas.local_redis import LocalRedis
from epp.requestcontrol.director import Director
from epp.sim.tokens import render_chat, tokenize
from tests.unit.plugin_helpers import context

HEADERS = {":path": "/v1/chat/completions", ":method": "POST"}


def config(index: str) -> str:
    return (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- type: token-producer\n"
        "- type: precise-prefix-cache-producer\n"
        "  parameters:\n"
        "    tokenProcessorConfig: {blockSize: 16}\n"
        f"    indexerConfig: {{kvBlockIndexConfig: {index}}}\n"
        "    kvEventsConfig: {discoverPods: false}\n"
        "- type: prefix-cache-scorer\n"
        "  parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}\n"
        "- {type: max-score-picker}\n"
        "schedulingProfiles:\n- name: default\n"
        "  plugins: [{pluginRef: prefix-cache-scorer}, {pluginRef: max-score-picker}]\n"
    )


def epp(text: str, seed: int) -> tuple[Director, PrecisePrefixCacheProducer, Datastore]:
    datastore = Datastore()
    datastore.replace_all([EndpointSpec(name=f"p{i}", address="10.0.0.1", port=8000 + i) for i in range(3)])
    director, components = build_director(load_config(text), datastore, context(seed=seed))
    producer = components.plugins["precise-prefix-cache-producer"]
    tokens = components.plugins["token-producer"]
    assert isinstance(producer, PrecisePrefixCacheProducer) and isinstance(tokens, TokenProducer)
    tokens.sync_tokenizer = lambda request: tokenize(
        render_chat([(m["role"], m["content"]) for m in request.body["messages"]])
    )
    return director, producer, datastore


async def route(director: Director, content: str) -> str:
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
    prepared = await director.prepare_body(raw, HEADERS)
    routed = director.handle_body(raw, HEADERS, None, prepared=prepared)
    routed.finish()
    return routed.result.targets[0].name


async def test_two_epps_share_what_one_of_them_learned(redis_server: LocalRedis) -> None:
    text = config(f"{{redisConfig: {{address: '{redis_server.url}', ttl: 10m}}}}")
    epps = [epp(text, seed) for seed in (1, 2)]
    for _, producer, datastore in epps:
        assert isinstance(producer.cache.index, RedisKVBlockIndex)
        await producer.start(datastore)
    try:
        held = {"p1": "the ledger of the first pod " * 8, "p2": "an almanac of the second pod " * 8}
        learner = epps[0][1]
        for pod, content in held.items():
            tokens = tokenize(render_chat([("user", content)]))
            tokens = tokens[: len(tokens) // 16 * 16]
            hostport = f"10.0.0.1:800{pod[1]}"
            learner.apply_kv_events(
                hostport, [BlockStored(prompt_block_hashes(tokens, 16, "e"), None, tokens, None)], "m"
            )
        assert isinstance(learner.cache.index, RedisKVBlockIndex)
        await learner.cache.index.flushed()
        for director, _, _ in epps:  # ties would be broken at random, differently by each seed
            for _ in range(3):
                assert [await route(director, content) for content in held.values()] == ["p1", "p2"]
        hits = epps[1][0].metrics.registry.get_sample_value("llm_d_epp_kv_cache_index_lookup_hits_total")
        assert hits is not None and hits > 0
        # p1 leaves the pool of the EPP that never read its events: gone for both
        epps[1][2].replace_all(
            [EndpointSpec(name=n, address="10.0.0.1", port=8000 + i) for i, n in ((0, "p0"), (2, "p2"))]
        )
        other = epps[1][1].cache.index
        assert isinstance(other, RedisKVBlockIndex)
        await other.flushed()
        tokens = tokenize(render_chat([("user", held["p1"])]))
        assert await learner.cache.index.lookup(learner.cache.index.keys_for(tokens, "m")) == {}
    finally:
        for _, producer, _ in epps:
            await producer.stop()


async def test_an_epp_whose_redis_is_gone_still_routes(redis_server: LocalRedis) -> None:
    director, producer, datastore = epp(config(f"{{redisConfig: {{address: '{redis_server.url}'}}}}"), 3)
    await producer.start(datastore)
    try:
        await redis_server.stop()
        picked = {await route(director, f"question {n} " * 10) for n in range(12)}
        assert picked <= {"p0", "p1", "p2"} and len(picked) > 1  # load alone decides: random ties
        registry = director.metrics.registry
        failed = registry.get_sample_value("epp_kv_index_redis_errors_total", {"operation": "lookup"})
        skipped = registry.get_sample_value("epp_kv_index_redis_lookups_skipped_total")
        assert failed is not None and skipped is not None  # tried once a second, skipped meanwhile
        assert failed >= 1 and failed + skipped == 12
    finally:
        await producer.stop()


def test_llm_d_redis_and_valkey_configs() -> None:
    valkey = config("{valkeyConfig: {address: 'valkey://v:6379', backendType: valkey, enableRDMA: true}}")
    _, producer, _ = epp(valkey, 1)
    index = producer.cache.index
    assert isinstance(index, RedisKVBlockIndex) and index.url == "redis://v:6379"
    bare = config("{redisConfig: {address: 'redis-svc:6379'}, inMemoryConfig: {size: 10}}")
    index = epp(bare, 1)[1].cache.index  # Redis wins over inMemoryConfig, as in llm-d
    assert isinstance(index, RedisKVBlockIndex) and index.url == "redis://redis-svc:6379"
    with pytest.raises(ConfigError, match=r"redisConfig.address.*unsupported scheme 'http'"):
        load_config(config("{redisConfig: {address: 'http://r:6379'}}"))
    with pytest.raises(ConfigError, match=r"redisConfig.ttl"):
        load_config(config("{redisConfig: {ttl: -1s}}"))
