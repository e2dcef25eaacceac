"""previous-response-affinity-filter: a Responses API follow-up (`previous_response_id`) goes to
the endpoint that made the response it names, learned from the responses passing through; bounded
by entries and time; every candidate when that endpoint is not one."""

from __future__ import annotations

from typing import Any

from epp.datastore import Endpoint
from epp.plugins.previous_response_affinity_filter import PreviousResponseAffinityFilter, response_key
from epp.replicas.state import RouteLearner
from epp.requestcontrol import RESPONSE_ID
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
    """The request's response passed through: the gateway's report (if any), then its id."""
    result = SchedulingResult({"default": ProfileResult([picked])}, "default")
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
    served(filter_, responses_request(), b, response_id="resp_1", metadata=report)
    assert filter_.filter(responses_request(previous_response_id="resp_1"), [a, b, c]) == [c]


def test_what_is_not_stored_is_not_learned_nor_read() -> None:
    filter_ = plugin(PreviousResponseAffinityFilter)
    b = endpoints(2)[1]
    unstored = responses_request(store=False)
    assert not filter_.reads_response_body(unstored)
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
