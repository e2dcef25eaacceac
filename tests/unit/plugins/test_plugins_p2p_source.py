"""`p2p-source-producer`: the peer sampled within one block of the most cached prefix, weighted by
queue, and the `x-kv-cache-source-host-port` header set only when that peer out-caches the pod
that computes the prompt; end to end with the approximate prefix producer."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint
from epp.framework import PluginContext
from epp.headers import KV_CACHE_SOURCE_HEADER
from epp.params.strict import ConfigError
from epp.plugins.p2p_source_producer import P2PSourceProducer, PeerSource, spread_fraction
from epp.requests import InferenceRequest
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import endpoints, plugin, request

BLOCK = 16


def producer(**params: object) -> P2PSourceProducer:
    p = plugin(P2PSourceProducer, params)
    p.bind_producer(PREFIX_MATCH, "prefix")
    return p


def with_match(matched: dict[Endpoint, int], request_id: str = "r") -> InferenceRequest:
    r = request()
    r.request_id = request_id
    r.attributes["prefix"] = PrefixMatch(list(range(8)), matched, BLOCK)
    return r


def result(primary: Endpoint, prefill: Endpoint | None = None) -> SchedulingResult:
    profiles: dict[str, ProfileResult | None] = {"decode": ProfileResult([primary])}
    if prefill is not None:
        profiles["prefill"] = ProfileResult([prefill])
    return SchedulingResult(profiles, "decode")


def test_fnv1a_spread_is_go_fnv32a_over_2_to_the_32() -> None:
    assert spread_fraction("") == 0x811C9DC5 / 2**32
    assert spread_fraction("a") == 0xE40C292C / 2**32


def test_sources_are_sampled_within_one_block_of_the_most_cached_by_queue() -> None:
    e0, e1, e2, e3 = endpoints(4)
    e1.metrics.waiting_queue_size = 3  # weight 1/4 against e0's 1
    p = producer()
    chosen: Counter[str] = Counter()
    rng = random.Random(0)
    for _ in range(4000):  # request ids are UUIDs, as Envoy generates them
        request_id = str(uuid.UUID(int=rng.getrandbits(128)))
        r = with_match({e0: 4, e1: 5, e2: 3, e3: 0}, request_id)  # e2 is two blocks short of e1
        p.prepare(r, [e0, e1, e2, e3])
        peer = r.attributes[p.name]
        assert isinstance(peer, PeerSource)
        chosen[peer.hostport] += 1
    assert set(chosen) == {e0.hostport, e1.hostport}
    assert chosen[e0.hostport] / 4000 == pytest.approx(0.8, abs=0.03)


def test_nothing_is_stashed_without_any_cached_block() -> None:
    e0, e1 = endpoints(2)
    p = producer()
    r = with_match({})
    p.prepare(r, [e0, e1])
    assert p.name not in r.attributes
    r = request()  # no match data at all
    p.prepare(r, [e0, e1])
    assert p.name not in r.attributes


def test_the_header_needs_the_peer_to_out_cache_the_computing_pod() -> None:
    e0, e1, e2 = endpoints(3)
    p = producer(minCachedTokenDelta=2 * BLOCK + 1)
    r = with_match({e0: 3, e1: 1})  # e1 is two blocks short: never the source
    p.prepare(r, [e0, e1, e2])
    assert r.attributes[p.name] == PeerSource(e0.hostport, 3 * BLOCK)
    scheduled = result(e2)
    scheduled.headers[KV_CACHE_SOURCE_HEADER] = "169.254.169.254:80"
    p.pre_request(r, scheduled)  # e2 caches nothing: 48 tokens ahead
    assert scheduled.headers == {KV_CACHE_SOURCE_HEADER: e0.hostport}
    scheduled = result(e1)  # 32 tokens ahead: below the delta
    p.pre_request(r, scheduled)
    assert scheduled.headers == {}
    scheduled = result(e0)  # the source itself computes
    p.pre_request(r, scheduled)
    assert scheduled.headers == {}
    scheduled = result(e1, prefill=e2)  # P/D: the prefill pick computes the prompt
    p.pre_request(r, scheduled)
    assert scheduled.headers == {KV_CACHE_SOURCE_HEADER: e0.hostport}


def test_a_renamed_prefill_profile() -> None:
    e0, e1 = endpoints(2)
    for profile, expected in (("pf", {KV_CACHE_SOURCE_HEADER: e0.hostport}), ("prefill", {})):
        p = producer(prefillProfileName=profile)
        r = with_match({e0: 3})
        p.prepare(r, [e0, e1])
        scheduled = SchedulingResult({"decode": ProfileResult([e0]), "pf": ProfileResult([e1])}, "decode")
        p.pre_request(r, scheduled)  # "pf" computes the prompt only when it is the prefill profile
        assert scheduled.headers == expected


CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters: {blockSizeTokens: 4}
- type: p2p-source-producer
  parameters: {prefixMatchInfoProducerName: approx-prefix-cache-producer}
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
"""


def test_end_to_end_the_peer_that_served_the_prefix_becomes_the_source() -> None:
    datastore = Datastore()
    e0, e1 = (datastore.upsert(e.spec) for e in endpoints(2))
    director, _ = build_director(load_config(CONFIG), datastore, PluginContext())
    prompt = "the same long system prompt, shared by both requests " * 4
    first = director.route(request(prompt), subset=[e0.hostport])
    assert first.result.targets == [e0] and KV_CACHE_SOURCE_HEADER not in first.result.headers
    first.finish()
    e0.metrics.waiting_queue_size = 10  # the queue scorer now prefers e1
    second = director.route(request(prompt))
    assert second.result.targets == [e1]
    assert second.result.headers[KV_CACHE_SOURCE_HEADER] == e0.hostport
    second.finish()


def test_the_delta_must_be_at_least_one() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            CONFIG.replace(
                "{prefixMatchInfoProducerName: approx-prefix-cache-producer}", "{minCachedTokenDelta: 0}"
            )
        )
    assert "minCachedTokenDelta: Input should be greater than or equal to 1" in str(caught.value)
