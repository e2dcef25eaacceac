"""previous-response-affinity-filter: a Responses API follow-up (`previous_response_id`) goes to
the endpoint that made the response it names, learned from the responses passing through; bounded
by entries and time; every candidate when that endpoint is not one."""

from __future__ import annotations

from typing import Any

import orjson

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.headers import SERVED_KEY
from epp.plugins.previous_response_affinity_filter import PreviousResponseAffinityFilter, response_key
from epp.replicas.state import RouteLearner
from epp.requestcontrol import RESPONSE_ID, SERVED_ENDPOINT
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
