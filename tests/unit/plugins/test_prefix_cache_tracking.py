"""llm-d v0.2-v0.5's `prefix-cache-scorer` with `mode: cache_tracking` (the KV-event prefix cache,
renamed `precise-prefix-cache-scorer` in llm-d v0.3): the upstream documents load unchanged, are
read as the precise scorer with cache_tracking's defaults, and route by the KV events the engines
publish to the socket they configure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import zmq
import zmq.asyncio

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.kvevents import BlockStored, encode_batch, prompt_block_hashes
from epp.params.strict import ConfigError
from epp.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.plugins.token_producer import TokenProducer
from epp.scheduling.prefix.precise import PreciseParams
from tests.unit.plugin_helpers import context

UPSTREAM = Path(__file__).parents[2] / "data/upstream/configs"
V02 = UPSTREAM / "llmd-sched-v0.2.0__deploy__config__epp-prefix-cache-tracking-config.yaml"
V05 = UPSTREAM / "llmd-sched-v0.5.0__deploy__config__sim-epp-kvcache-config.yaml"


def test_v02_document_is_the_precise_scorer_with_cache_tracking_defaults() -> None:
    config = load_config(V02.read_text())
    spec = config.plugins["prefix-cache-scorer"]
    assert spec.cls is PrecisePrefixCacheScorer
    params = spec.params
    assert isinstance(params, PreciseParams)
    processor = params.processor()
    assert (processor.tokens(), processor.hash_seed) == (64, "42")
    events = params.kv_events_config
    assert (events.zmq_endpoint, events.discover_pods, events.topic_filter) == ("tcp://*:5557", False, "kv@")
    assert config.warnings[0].startswith(
        "plugins[2].parameters: mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as "
        "precise-prefix-cache-scorer"
    )
    assert "precise-prefix-cache-producer and prefix-cache-scorer" in config.warnings[0]
    assert "cache_tracking's default tcp://*:5557 is bound" in config.warnings[1]
    # The scorer reads token ids from a token-producer, created for it when none is configured.
    assert config.plugins["token-producer"].cls is TokenProducer


def test_v05_document_keeps_its_socket_and_top_level_token_processor() -> None:
    config = load_config(V05.read_text())
    params = config.plugins["prefix-cache-scorer"].params
    assert isinstance(params, PreciseParams)
    assert params.kv_events_config.zmq_endpoint == "tcp://0.0.0.0:5557"
    assert params.processor().tokens() == 16 and params.processor().hash_seed == "42"
    assert len(config.warnings) == 1  # prefixStoreConfig and tokenizersPoolConfig are known fields


def test_cache_tracking_on_another_prefix_type_is_refused() -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- {type: approx-prefix-cache-producer, parameters: {mode: cache_tracking}}\n"
    )
    with pytest.raises(ConfigError, match="here use precise-prefix-cache-producer"):
        load_config(text)


def test_a_bad_kv_events_config_is_reported_as_the_precise_scorer_reads_it() -> None:
    text = V02.read_text().replace(
        "      mode: cache_tracking\n", "      mode: cache_tracking\n      kvEventsConfig: [1]\n"
    )
    with pytest.raises(ConfigError, match=r"plugins\[2\]\.parameters\.kvEventsConfig"):
        load_config(text)


async def test_translated_scorer_routes_by_the_kv_events_engines_publish() -> None:
    """The v0.3 document as written, its socket moved to a free local port: an engine publishes
    over ZMQ that it holds a prompt's blocks, and the request goes to it."""
    text = (UPSTREAM / "llmd-sched-v0.3.0__deploy__config__sim-epp-kvcache-config.yaml").read_text()
    text = text.replace("tcp://0.0.0.0:5557", "tcp://127.0.0.1:0")
    datastore = Datastore()
    datastore.replace_all([EndpointSpec(name=f"p{i}", address="127.0.0.1", port=8000 + i) for i in range(3)])
    director, components = build_director(load_config(text), datastore, context(seed=3))
    scorer = components.plugins["prefix-cache-scorer"]
    assert isinstance(scorer, PrecisePrefixCacheScorer)
    await scorer.start(datastore)
    publisher = zmq.asyncio.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    try:
        publisher.connect(scorer.cache.events_endpoint)
        tokens = list(range(1000, 1064))  # four 16-token blocks
        stored = BlockStored(prompt_block_hashes(tokens, 16, "engine"), None, tokens, None)
        payload = encode_batch([stored], 0.0, 16, {})
        for seq in range(400):  # a PUB socket drops messages until the connection is up
            await publisher.send_multipart([b"kv@127.0.0.1:8002@m", seq.to_bytes(8, "big"), payload])
            if scorer.cache.index.pods():
                break
            await asyncio.sleep(0.01)
        assert scorer.cache.index.pods() == ["127.0.0.1:8002"]
        raw = orjson.dumps({"model": "m", "prompt": [*tokens, 7, 8], "max_tokens": 1})
        headers = {":path": "/v1/completions", ":method": "POST"}
        for _ in range(5):  # a tie broken at random would pick p2 one time in three
            routed = director.handle_body(raw, headers, None)
            assert routed.result.targets[0].name == "p2"
            routed.finish()
        other = orjson.dumps({"model": "m", "prompt": list(range(64)), "max_tokens": 1})
        routed = director.handle_body(other, headers, None)
        routed.finish()
        hits = director.metrics.registry.get_sample_value("llm_d_epp_kv_cache_index_lookup_hits_total")
        assert hits == 5 * 4  # four blocks found per routed prompt; none for the unrelated one
    finally:
        publisher.close()
        await scorer.stop()
