"""previous-response-affinity-filter: a Responses API follow-up (`previous_response_id`) goes to
the endpoint that made the response it names, learned from the responses passing through; bounded
by entries and time; every candidate when that endpoint is not one."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.headers import SERVED_KEY
from epp.metrics.exporter import EppMetrics
from epp.plugins.previous_response_affinity_filter import PreviousResponseAffinityFilter, response_key
from epp.replicas.state import ReplicaState, RouteLearner
from epp.requestcontrol import RESPONSE_ID, SERVED_ENDPOINT
from epp.requestcontrol.director import Director
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import FakeClock, context, endpoints, plugin


def responses_request(**body: Any) -> InferenceRequest:
    return InferenceRequest(
        request_id="r", api=ApiKind.RESPONSES, path="/v1/responses", model="m", body={"input": "hi", **body}
    )


def served(
    filter_: PreviousResponseAffinityFilter, request: InferenceRequest, picked: Endpoint, **seen: Any
) -> None:
    """The request's response passed through: the gateway's report (if any; `served`: the
    endpoint the director found at it), then its id."""
    result = SchedulingResult({"default": ProfileResult([picked])}, "default")
    if "served" in seen:
        request.attributes[SERVED_ENDPOINT] = seen["served"]
    filter_.response_headers(request, result, seen.get("metadata", {}))
    if "response_id" in seen:
        request.attributes[RESPONSE_ID] = seen["response_id"]
    filter_.response_complete(request, result, None)


def test_a_follow_up_keeps_only_the_endpoint_that_made_its_response() -> None:
    filter_ = plugin(PreviousResponseAffinityFilter)
    a, b, c = endpoints(3)
    served(filter_, responses_request(), b, response_id="resp_1")
    assert filter_.filter(responses_request(previous_response_id="resp_1"), [a, b, c]) == [b]
    # Unknown ids, requests without one, and other APIs keep every candidate.
    assert filter_.filter(responses_request(previous_response_id="resp_2"), [a, b, c]) == [a, b, c]
    assert filter_.filter(responses_request(), [a, b, c]) == [a, b, c]
    # The endpoint is gone (or filtered out before): normal scheduling, the server answers.
    assert filter_.filter(responses_request(previous_response_id="resp_1"), [a, c]) == [a, c]


def test_the_gateways_served_endpoint_wins_over_the_pick() -> None:
    """Envoy retried on c: the response (and vLLM's stored copy) is on c."""
    filter_ = plugin(PreviousResponseAffinityFilter)
    a, b, c = endpoints(3)
    report = {"envoy.lb": {"x-gateway-destination-endpoint-served": c.hostport}}
    served(filter_, responses_request(), b, response_id="resp_1", metadata=report, served=c)
    assert filter_.filter(responses_request(previous_response_id="resp_1"), [a, b, c]) == [c]
    # Served outside the pool: pinned by the reported address (it may join), no peer told.
    heard: list[object] = []
    filter_.route_listeners.append(lambda endpoint, keys: heard.append(endpoint))
    report = {"envoy.lb": {"x-gateway-destination-endpoint-served": "10.9.9.9:8000"}}
    served(filter_, responses_request(), b, response_id="resp_2", metadata=report, served=None)
    assert filter_.pins.get(response_key("resp_2")) == "10.9.9.9:8000"
    assert heard == []


def test_what_is_not_stored_is_not_learned_nor_read() -> None:
    filter_ = plugin(PreviousResponseAffinityFilter)
    b = endpoints(2)[1]
    unstored = responses_request(store=False)
    assert not filter_.reads_response_body(unstored)
    # vLLM stores only when `store` is truthy: null (an explicit None) stores nothing either.
    assert not filter_.reads_response_body(responses_request(store=None))
    served(filter_, unstored, b, response_id="resp_1")
    failed = responses_request()  # an error answer carries no response id
    assert filter_.reads_response_body(failed)
    served(filter_, failed, b)
    assert filter_.pins.entries == {}
    chat = InferenceRequest(request_id="r", api=ApiKind.CHAT, path="/v1/chat/completions", model="m")
    assert not filter_.reads_response_body(chat)


def test_pins_are_bounded_in_number_time_and_id_length() -> None:
    clock = FakeClock()
    filter_ = plugin(
        PreviousResponseAffinityFilter, {"maxEntries": 3, "ttlSeconds": 60}, context(clock=clock)
    )
    a, b = endpoints(2)
    for i in range(5):
        served(filter_, responses_request(), b, response_id=f"resp_{i}")
    assert list(filter_.pins.entries) == [response_key(f"resp_{i}") for i in (2, 3, 4)]
    assert filter_.filter(responses_request(previous_response_id="resp_0"), [a, b]) == [a, b]
    assert filter_.filter(responses_request(previous_response_id="resp_4"), [a, b]) == [b]
    clock.now += 61
    assert filter_.filter(responses_request(previous_response_id="resp_4"), [a, b]) == [a, b]
    # A client's id of any length is pinned by its 64-bit digest; ids sharing a long start differ.
    long_id = "resp_" + "x" * 20_000
    served(filter_, responses_request(), b, response_id=long_id + "1")
    assert filter_.filter(responses_request(previous_response_id=long_id + "1"), [a, b]) == [b]
    assert filter_.filter(responses_request(previous_response_id=long_id + "2"), [a, b]) == [a, b]
    assert all(isinstance(key, int) for key in filter_.pins.entries)


def test_pins_are_routes_active_active_replicas_share() -> None:
    """Each pin learned here goes to the replica listeners (as the prefix index's routes do); a
    peer's pin is learned; the replicas find the plugin by the RouteLearner protocol."""
    here, peer = plugin(PreviousResponseAffinityFilter), plugin(PreviousResponseAffinityFilter)
    assert isinstance(here, RouteLearner)
    a, b = endpoints(2)
    heard: list[tuple[Endpoint, tuple[int, ...]]] = []
    here.route_listeners.append(lambda endpoint, keys: heard.append((endpoint, tuple(keys))))
    served(here, responses_request(), b, response_id="resp_1")
    assert heard == [(b, (response_key("resp_1"),))]
    peer.learn(*heard[0])
    assert peer.filter(responses_request(previous_response_id="resp_1"), [a, b]) == [b]


DATA_PARALLEL = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: data-parallel-profile-handler}
- {type: previous-response-affinity-filter, name: previous}
schedulingProfiles:
- {name: default, plugins: [{pluginRef: previous}]}
"""


def test_a_data_parallel_rank_is_pinned_not_the_pods_primary_port() -> None:
    """llm-d's data-parallel routing: the gateway sends every rank's requests to the pod's primary
    port and reports that address as served. The response was made, and is stored, by the rank the
    EPP picked: the follow-up must reach that rank, not the endpoint at the primary port."""
    store = Datastore()
    store.synced = True
    store.upsert(EndpointSpec(name="rank1", address="10.0.0.1", port=8001))
    director, components = build_director(load_config(DATA_PARALLEL), store, PluginContext())
    filter_ = components.plugins["previous"]
    assert isinstance(filter_, PreviousResponseAffinityFilter)
    body = orjson.dumps({"model": "m", "input": "hi"})
    routed = director.handle_body(body, {":path": "/v1/responses", ":method": "POST"}, None)
    assert routed.destination == "10.0.0.1:8000"
    routed.served_by("10.0.0.1:8000")
    routed.response_started(200, False, {"envoy.lb": {SERVED_KEY: "10.0.0.1:8000"}})
    answer = {"id": "resp_1", "object": "response", "usage": {"input_tokens": 1, "output_tokens": 1}}
    routed.response_body(orjson.dumps(answer), True)
    store.upsert(EndpointSpec(name="rank0", address="10.0.0.1", port=8000))
    rank0, rank1 = store.get("rank0"), store.get("rank1")
    assert rank0 is not None and rank1 is not None
    assert filter_.filter(responses_request(previous_response_id="resp_1"), [rank0, rank1]) == [rank1]


def test_a_response_is_polled_and_cancelled_where_it_was_made() -> None:
    """GET /v1/responses/{id} and POST .../cancel end at their headers: the director asks the
    filter (a BodylessRouter) for the endpoint pinned for that id; any other id, path or an
    endpoint no longer ready: any ready endpoint, as for every bodyless request."""
    store = Datastore()
    store.synced = True
    for i in range(8):
        store.upsert(EndpointSpec(name=f"s{i}", address=f"10.0.0.{i}", port=8000))
    director, components = build_director(load_config(WITH_FILTER), store, PluginContext())
    filter_ = components.plugins["previous"]
    assert isinstance(filter_, PreviousResponseAffinityFilter)
    held = store.get("s5")
    assert held is not None
    served(filter_, responses_request(), held, response_id="resp_1")
    for path, method in [
        ("/v1/responses/resp_1", "GET"),
        ("/v1/responses/resp_1?stream=false", "GET"),
        ("/v1/responses/resp_1/cancel", "POST"),
        ("/v1/responses/resp_1/", "DELETE"),
    ] * 8:
        routed = director.handle_bodyless({":path": path, ":method": method}, None)
        assert routed.destination == held.hostport, path
        routed.finish()
    spread = set()
    for path in ["/v1/responses/resp_2", "/v1/responses", "/v1/responses/resp_1/input_items"] * 16:
        routed = director.handle_bodyless({":path": path, ":method": "GET"}, None)
        spread.add(routed.destination)
        routed.finish()
    assert len(spread) > 1
    store.remove("s5")
    routed = director.handle_bodyless({":path": "/v1/responses/resp_1", ":method": "GET"}, None)
    assert routed.destination != held.hostport


WITH_FILTER = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: previous-response-affinity-filter, name: previous}
- {type: random-picker}
schedulingProfiles:
- {name: default, plugins: [{pluginRef: previous}, {pluginRef: random-picker}]}
"""


def replica(params: str = "", pool: int = 8) -> tuple[Director, PreviousResponseAffinityFilter, Datastore]:
    """One EPP replica beside peers: its filter's pins are shared (a replica state listens)."""
    store = Datastore()
    store.synced = True
    for i in range(pool):
        store.upsert(EndpointSpec(name=f"s{i}", address=f"10.0.0.{i}", port=8000))
    config = WITH_FILTER.replace("name: previous}", f"name: previous, parameters: {{{params}}}}}")
    context = PluginContext(EppMetrics())
    director, components = build_director(load_config(config), store, context)
    filter_ = components.plugins["previous"]
    assert isinstance(filter_, PreviousResponseAffinityFilter)
    ReplicaState("here", store, components.plugins.values())
    WAIT_METRICS[filter_] = context.metrics
    return director, filter_, store


WAIT_METRICS: dict[PreviousResponseAffinityFilter, EppMetrics] = {}


def held_by(store: Datastore, name: str) -> Endpoint:
    endpoint = store.get(name)
    assert endpoint is not None
    return endpoint


def waits(filter_: PreviousResponseAffinityFilter, outcome: str) -> float:
    value = WAIT_METRICS[filter_].registry.get_sample_value(
        "epp_previous_response_pin_waits_total", {"plugin_name": filter_.name, "outcome": outcome}
    )
    return value or 0.0


def addressed(path: str) -> InferenceRequest:
    return InferenceRequest(request_id="r", api=ApiKind.OTHER, path=path, model="")


FOLLOW_UP_HEADERS = {":path": "/v1/responses", ":method": "POST"}


async def test_a_follow_up_ahead_of_its_pin_waits_for_the_peers_pin() -> None:
    """The race across replicas: the follow-up reaches this replica before the peer's pin (a
    Redis round trip after the response). It waits for the pin, then keeps only its endpoint;
    without the wait it would go to any of 8 endpoints (each of 8 follow-ups: 1 in 8)."""
    director, filter_, store = replica()
    assert director.prepares_async
    loop = asyncio.get_running_loop()
    for i in range(8):
        held = held_by(store, f"s{i}")
        loop.call_later(0.01, filter_.learn, held, [response_key(f"resp_{i}")])  # the peer's pin, late
        body = orjson.dumps({"model": "m", "input": "and then?", "previous_response_id": f"resp_{i}"})
        prepared = await director.prepare_body(body, FOLLOW_UP_HEADERS)
        routed = director.handle_body(body, FOLLOW_UP_HEADERS, None, prepared=prepared)
        assert routed.destination == held.hostport, i
        routed.finish()
    assert waits(filter_, "arrived") == 8
    assert filter_.waits.waiting == 0 and not filter_.waits._awaited


async def test_a_poll_ahead_of_its_pin_waits_for_it() -> None:
    """GET /v1/responses/{id} (and its cancel) end at their headers: the same wait, then the
    pinned endpoint."""
    director, filter_, store = replica()
    loop = asyncio.get_running_loop()
    for i, path in enumerate(["/v1/responses/resp_{}", "/v1/responses/resp_{}/cancel"] * 4):
        held = held_by(store, f"s{i}")
        loop.call_later(0.01, filter_.learn, held, [response_key(f"resp_{i}")])
        headers = {":path": path.format(i), ":method": "POST" if "cancel" in path else "GET"}
        await director.prepare_bodyless(headers)
        routed = director.handle_bodyless(headers, None)
        assert routed.destination == held.hostport, path
        routed.finish()
    assert waits(filter_, "arrived") == 8


async def test_the_wait_is_bounded_in_time_and_in_waiters() -> None:
    director, filter_, store = replica("peerPinWaitSeconds: 0.02, maxPinWaiters: 2")
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = orjson.dumps({"model": "m", "input": "x", "previous_response_id": "resp_never"})
    prepared = await director.prepare_body(body, FOLLOW_UP_HEADERS)
    assert 0.015 < loop.time() - started < 1.0
    # No pin came: scheduled as before, over every candidate.
    director.handle_body(body, FOLLOW_UP_HEADERS, None, prepared=prepared).finish()
    assert waits(filter_, "timeout") == 1
    # Two wait (here on one id, sharing its future); a third is scheduled at once, not waiting.
    follow_up = responses_request(previous_response_id="resp_a")
    first = loop.create_task(filter_.prepare_async(follow_up))
    second = loop.create_task(filter_.prepare_async(follow_up))
    await asyncio.sleep(0)
    assert filter_.waits.waiting == 2 and len(filter_.waits._awaited) == 1
    started = loop.time()
    await filter_.prepare_async(responses_request(previous_response_id="resp_b"))
    assert loop.time() - started < 0.01
    assert waits(filter_, "full") == 1
    # One pin releases both waiters of its id, once.
    filter_.learn(held_by(store, "s1"), [response_key("resp_a")])
    await asyncio.gather(first, second)
    assert waits(filter_, "arrived") == 2
    assert filter_.waits.waiting == 0 and not filter_.waits._awaited


async def test_a_client_gone_stops_waiting_alone() -> None:
    """Cancelling one waiter (Envoy reset the stream) leaves the others of the same id waiting;
    the last one gone drops the id's future."""
    _, filter_, store = replica()
    loop = asyncio.get_running_loop()
    follow_up = responses_request(previous_response_id="resp_1")
    gone = loop.create_task(filter_.prepare_async(follow_up))
    staying = loop.create_task(filter_.prepare_async(follow_up))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert filter_.waits.waiting == 1 and waits(filter_, "cancelled") == 1
    filter_.learn(held_by(store, "s3"), [response_key("resp_1")])
    await staying
    assert waits(filter_, "arrived") == 1
    assert filter_.filter(follow_up, store.ready_endpoints()) == [held_by(store, "s3")]
    alone = loop.create_task(filter_.prepare_async(responses_request(previous_response_id="resp_2")))
    await asyncio.sleep(0)
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    assert filter_.waits.waiting == 0 and not filter_.waits._awaited


def test_without_peers_or_with_the_pin_nothing_waits() -> None:
    """Alone (no replica sync), a missing pin is not on its way: no request takes the awaited
    step for it. Beside peers, a pinned id does not wait, nor does any with the wait set to 0."""
    store = Datastore()
    director, components = build_director(load_config(WITH_FILTER), store, PluginContext())
    alone = components.plugins["previous"]
    assert isinstance(alone, PreviousResponseAffinityFilter)
    assert not director.prepares_async and not alone.awaits_requests
    assert alone.bodyless_wait(addressed("/v1/responses/resp_1")) is None
    _, shared, store = replica()
    shared.learn(held_by(store, "s1"), [response_key("resp_1")])
    assert shared.bodyless_wait(addressed("/v1/responses/resp_1")) is None
    assert shared.bodyless_wait(addressed("/v1/models")) is None
    director, never, _ = replica("peerPinWaitSeconds: 0")
    assert not director.prepares_async
    assert never.bodyless_wait(addressed("/v1/responses/resp_2")) is None
