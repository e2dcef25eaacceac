"""session-affinity-filter and session-id-producer (llm-d router v0.9+), and the session pinning
they share with session-affinity-scorer: llm-d keeps a binding where it is unless its endpoint
was missing from the candidates."""

from __future__ import annotations

import base64

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.session_affinity_filter import SessionAffinityFilter
from epp.plugins.session_affinity_scorer import SessionAffinityScorer
from epp.plugins.session_id_producer import SessionIdProducer, cookie_value
from epp.scheduling.session_affinity import endpoint_id
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import FakeClock, context, endpoint, endpoints, plugin, request


def result(primary: Endpoint) -> SchedulingResult:
    return SchedulingResult({"default": ProfileResult([primary])}, "default")


def token(namespace: str, name: str) -> str:
    return base64.b64encode(f"{namespace}/{name}".encode()).decode()


def test_token_strategy_keeps_only_the_encoded_endpoint_else_everyone() -> None:
    filter_ = plugin(SessionAffinityFilter)
    a, b = endpoint("a", namespace="ns"), endpoint("b", namespace="ns")
    assert filter_.filter(request(headers={"x-session-token": token("ns", "b")}), [a, b]) == [b]
    assert filter_.filter(request(headers={"x-session-token": token("ns", "gone")}), [a, b]) == [a, b]
    assert filter_.filter(request(headers={"x-session-token": "not base64!"}), [a, b]) == [a, b]
    assert filter_.filter(request(), [a, b]) == [a, b]
    routed = result(a)
    filter_.pre_request(request(), routed)
    assert routed.response_headers == {"x-session-token": token("ns", "a")}


def session_plugin(cls: type, clock: FakeClock, **config: object) -> SessionAffinityFilter:
    params = {"strategy": "session_id", "sessionIdConfig": {"evictionTtlSeconds": 300, **config}}
    return plugin(cls, params, context(clock=clock))  # type: ignore[no-any-return]


def test_session_id_strategy_pins_after_the_first_pick() -> None:
    filter_ = session_plugin(SessionAffinityFilter, FakeClock())
    a, b, c = endpoints(3)
    req = request(headers={"x-session-id": " s1 "})
    assert filter_.filter(req, [a, b, c]) == [a, b, c]
    filter_.pre_request(req, result(b))
    assert filter_.filter(request(headers={"x-session-id": "s1"}), [a, b, c]) == [b]
    assert filter_.filter(request(headers={"x-session-id": "s2"}), [a, b, c]) == [a, b, c]


@pytest.mark.parametrize("cls", [SessionAffinityFilter, SessionAffinityScorer])
def test_a_binding_moves_only_when_its_endpoint_was_not_a_candidate(cls: type) -> None:
    pins = session_plugin(cls, FakeClock()).pins
    a, b, c = endpoints(3)
    pins.record(request(headers={"x-session-id": "s"}), result(a))
    # a was a candidate, yet b was picked (the scorer is only a preference): the session stays on a.
    seen = request(headers={"x-session-id": "s"})
    assert pins.choose(seen, [a, b]) is a
    pins.record(seen, result(b))
    assert pins.sessions.entries["s"][0] == endpoint_id(a)
    # a was filtered out before this plugin ran: the session moves to where it went.
    missing = request(headers={"x-session-id": "s"})
    assert pins.choose(missing, [b, c]) is None
    pins.record(missing, result(c))
    assert pins.sessions.entries["s"][0] == endpoint_id(c)


def test_ttl_and_sweep_take_fractions_of_seconds() -> None:
    clock = FakeClock()
    filter_ = session_plugin(SessionAffinityFilter, clock, evictionTtlSeconds=0.5, evictionSweepSeconds=0.25)
    a, b = endpoints(2)
    filter_.pre_request(request(headers={"x-session-id": "s"}), result(b))
    clock.now += 0.4
    assert filter_.filter(request(headers={"x-session-id": "s"}), [a, b]) == [b]
    clock.now += 0.2
    assert filter_.filter(request(headers={"x-session-id": "s"}), [a, b]) == [a, b]
    filter_.pre_request(request(headers={"x-session-id": "other"}), result(a))
    assert list(filter_.pins.sessions.entries) == ["other"]


UNIQUE_SESSIONS = 200_000


@pytest.mark.parametrize("cls", [SessionAffinityFilter, SessionAffinityScorer])
def test_unique_session_ids_cannot_grow_the_table_past_max_entries(cls: type) -> None:
    """A client sending a new session id per request grew llm-d's table to rate x TTL: ours
    stops at `maxEntries` (default 100,000), dropping the least recently pinned sessions; the
    newest stay pinned."""
    a, b = endpoints(2)
    default = session_plugin(cls, FakeClock()).pins
    capped = session_plugin(cls, FakeClock(), maxEntries=1_000).pins
    for i in range(UNIQUE_SESSIONS):
        req = request(headers={"x-session-id": f"s{i}"})
        default.record(req, result(b))
        if i % 100 == 0:
            capped.record(req, result(b))
    assert len(default.sessions.entries) == 100_000
    assert len(capped.sessions.entries) == 1_000
    newest = request(headers={"x-session-id": f"s{UNIQUE_SESSIONS - 1}"})
    assert default.choose(newest, [a, b]) is b
    assert default.choose(request(headers={"x-session-id": "s0"}), [a, b]) is None


def test_max_entries_below_one_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="maxEntries"):
        load_config(CONFIG.replace("    sessionIdConfig:\n", "    sessionIdConfig:\n      maxEntries: 0\n"))


def test_a_source_can_name_the_producer_of_its_attribute() -> None:
    filter_ = plugin(
        SessionAffinityFilter,
        {
            "strategy": "session_id",
            "sessionIdConfig": {"sources": [{"attribute": "SessionIDDataKey", "producer": "my-producer"}]},
        },
    )
    req = request()
    req.attributes["my-producer"] = "from-producer"
    assert filter_.pins.session_id(req) == "from-producer"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "give exactly one of headerName or cookieName"),
        ({"headerName": "x-a", "cookieName": "c"}, "give exactly one of headerName or cookieName"),
        ({"headerName": "  "}, "give exactly one of headerName or cookieName"),
    ],
)
def test_the_producer_needs_exactly_one_place(params: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SessionIdProducer.Params.model_validate(params)


def test_the_producer_reads_a_header_or_a_cookie() -> None:
    by_header = plugin(SessionIdProducer, {"headerName": " X-Session-ID "})
    req = request(headers={"x-session-id": " abc "})
    by_header.prepare(req, [])
    assert req.attributes == {"session-id-producer": "abc"}
    by_cookie = plugin(SessionIdProducer, {"cookieName": "llm-d-session"})
    req = request(headers={"cookie": "theme=dark; llm-d-session=s-42; other=1"})
    by_cookie.prepare(req, [])
    assert req.attributes == {"session-id-producer": "s-42"}
    empty = request(headers={"cookie": "theme=dark"})
    by_cookie.prepare(empty, [])
    assert empty.attributes == {}


@pytest.mark.parametrize(
    ("header", "value"),
    [("a=1; b=2", "2"), ("b=; a=1", ""), ("b", ""), ("b=x=y", "x=y"), ("B=1", ""), ("a=1;b=3;b=4", "3")],
)
def test_cookie_values_as_written(header: str, value: str) -> None:
    assert cookie_value(header, "b") == value


CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: session-id-producer
  name: my-session-producer
  parameters:
    cookieName: llm-d-session
- type: session-affinity-filter
  name: session-filter
  parameters:
    strategy: session_id
    sessionIdConfig:
      sources:
      - attribute: SessionIDDataKey
        producer: my-session-producer
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: session-filter
  - pluginRef: queue-scorer
"""


def test_a_cookie_session_sticks_to_its_endpoint_through_the_director() -> None:
    """The first request goes to the emptiest queue; its session's next requests stay there when
    another endpoint becomes emptier, and a request of another session follows the queues."""
    datastore = Datastore()
    for i in range(3):
        pod = datastore.upsert(EndpointSpec(name=f"pod-{i}", address="10.0.0.1", port=8000 + i))
        pod.metrics.waiting_queue_size = i
    director, _ = build_director(load_config(CONFIG), datastore, PluginContext())

    def route(request_id: str, cookie: str) -> str:
        body = orjson.dumps({"model": "m", "prompt": "hello"})
        headers = {":path": "/v1/completions", "x-request-id": request_id, "cookie": cookie}
        return director.handle_body(body, headers, None).destination

    assert route("r1", "llm-d-session=s1") == "10.0.0.1:8000"
    datastore.get("pod-0").metrics.waiting_queue_size = 9  # type: ignore[union-attr]
    assert route("r2", "llm-d-session=s1") == "10.0.0.1:8000"
    assert route("r3", "llm-d-session=s2") == "10.0.0.1:8001"


def test_a_bad_filter_parameter_is_refused_naming_it() -> None:
    bad = CONFIG.replace("strategy: session_id", "strategy: sticky")
    with pytest.raises(ConfigError, match=r"plugins\[1\]\.parameters\.strategy: Input should be"):
        load_config(bad)
