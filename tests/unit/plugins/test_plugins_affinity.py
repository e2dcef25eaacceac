"""session-affinity-scorer, no-hit-lru-scorer (llm-d.md 3.2-3.3) and single-profile-handler."""

from __future__ import annotations

import base64
import gc
import tracemalloc

import pytest

from epp.datastore import Endpoint
from epp.plugins.no_hit_lru_scorer import NoHitLruScorer
from epp.plugins.session_affinity_scorer import SessionAffinityScorer
from epp.plugins.single_profile_handler import SingleProfileHandler
from epp.requests import InferenceRequest
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.types import ProfileResult, SchedulingError, SchedulingResult
from tests.unit.plugin_helpers import FakeClock, context, endpoint, endpoints, plugin, request


def result(primary: Endpoint, **others: Endpoint) -> SchedulingResult:
    profiles: dict[str, ProfileResult | None] = {"default": ProfileResult([primary])}
    profiles.update({name: ProfileResult([target]) for name, target in others.items()})
    return SchedulingResult(profiles, "default")


def token(namespace: str, name: str) -> str:
    return base64.b64encode(f"{namespace}/{name}".encode()).decode()


def test_session_token_pins_the_encoded_endpoint() -> None:
    scorer = plugin(SessionAffinityScorer)
    candidates = [
        endpoint("a", namespace="ns"),
        endpoint("b", namespace="ns"),
        endpoint("b", namespace="other"),
    ]
    req = request(headers={"x-session-token": token("ns", "b")})
    assert scorer.score(req, candidates) == [0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "header",
    # The last: a client's non-ASCII token, which b64decode refuses with a plain ValueError (not
    # binascii.Error): the request failed with the EPP's 500 and a traceback.
    [None, "not base64!", base64.b64encode(b"\xff\xfe").decode(), "\u00e9"],
    ids=["missing", "not base64", "not UTF-8", "not ASCII"],
)
def test_session_token_missing_or_garbage_scores_zero(header: str | None) -> None:
    scorer = plugin(SessionAffinityScorer)
    req = request(headers={} if header is None else {"x-session-token": header})
    assert scorer.score(req, endpoints(2)) == [0.0, 0.0]


def test_session_token_is_returned_for_the_chosen_or_named_profile() -> None:
    decode, prefill = endpoint("d", namespace="ns"), endpoint("p", namespace="ns")
    plain = plugin(SessionAffinityScorer)
    routed = result(decode, prefill=prefill)
    plain.pre_request(request(), routed)
    assert routed.response_headers == {"x-session-token": token("ns", "d")}
    for_prefill = plugin(
        SessionAffinityScorer,
        {"profileName": "prefill", "encodedEndpointHeaderConfig": {"header": "X-Session-Token-Prefill"}},
    )
    for_prefill.pre_request(request(), routed)
    assert routed.response_headers["x-session-token-prefill"] == token("ns", "p")


def session_scorer(clock: FakeClock, **config: object) -> SessionAffinityScorer:
    params = {"strategy": "session_id", "sessionIdConfig": {"evictionTtlSeconds": 300, **config}}
    return plugin(SessionAffinityScorer, params, context(clock=clock))


def test_session_id_binds_on_pre_request_and_expires_after_ttl() -> None:
    clock = FakeClock()
    scorer = session_scorer(clock)
    a, b = endpoints(2)
    req = request(headers={"x-session-id": "s1"})
    assert scorer.score(req, [a, b]) == [0.0, 0.0]
    scorer.pre_request(req, result(b))
    assert scorer.score(req, [a, b]) == [0.0, 1.0]
    assert scorer.score(request(headers={"x-session-id": "s2"}), [a, b]) == [0.0, 0.0]
    clock.now += 299
    scorer.pre_request(req, result(b))  # every request refreshes the binding
    clock.now += 299
    assert scorer.score(req, [a, b]) == [0.0, 1.0]
    clock.now += 2
    assert scorer.score(req, [a, b]) == [0.0, 0.0]


def test_session_id_sweep_drops_expired_sessions() -> None:
    clock = FakeClock()
    scorer = session_scorer(clock, evictionSweepSeconds=10)
    a = endpoint("a")
    for i in range(3):
        scorer.pre_request(request(headers={"x-session-id": f"s{i}"}), result(a))
    clock.now += 301
    scorer.pre_request(request(headers={"x-session-id": "fresh"}), result(a))
    assert list(scorer.pins.sessions.entries) == ["fresh"]


def _held_by_sessions(length: int) -> int:
    """Bytes a session-id scorer holds after pinning 500 sessions named with `length` characters."""
    scorer = session_scorer(FakeClock())
    a = endpoint("a")

    def one(i: int) -> None:
        scorer.pre_request(request(headers={"x-session-id": f"s{i}-".ljust(length, "x")}), result(a))

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(500):
        one(i)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(scorer.pins.sessions.entries) == 500
    return held


def test_long_session_ids_are_pinned_by_digest() -> None:
    """Session ids come from clients (a header can be 60 KB) and pins live `evictionTtlSeconds`:
    an id longer than 256 characters is kept as its digest, so 500 sessions of 20,000-character
    ids hold no more than 500 of 300 characters (same run), and still pin."""
    scorer = session_scorer(FakeClock())
    a, b = endpoints(2)
    long_id = request(headers={"x-session-id": "y" * 20_000})
    scorer.pre_request(long_id, result(b))
    assert scorer.score(long_id, [a, b]) == [0.0, 1.0]
    assert scorer.score(request(headers={"x-session-id": "y" * 19_999 + "z"}), [a, b]) == [0.0, 0.0]
    assert _held_by_sessions(20_000) <= 1.5 * _held_by_sessions(300)


def test_session_id_sources_in_order_header_then_attribute() -> None:
    scorer = session_scorer(FakeClock(), sources=[{"header": "X-User"}, {"attribute": "session"}])
    a = endpoint("a")
    by_attribute = request()
    by_attribute.attributes["session"] = "from-attribute"
    scorer.pre_request(by_attribute, result(a))
    assert scorer.score(by_attribute, [a]) == [1.0]
    assert scorer.pins.session_id(request(headers={"x-user": "u"})) == "u"
    assert scorer.pins.session_id(request()) is None


def test_session_source_must_name_exactly_one_place() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SessionAffinityScorer.Params.model_validate(
            {"strategy": "session_id", "sessionIdConfig": {"sources": [{"header": "a", "attribute": "b"}]}}
        )


# --- no-hit-lru -----------------------------------------------------------------------------------


def with_match(req: InferenceRequest, matched: dict[Endpoint, int]) -> InferenceRequest:
    req.attributes["producer"] = PrefixMatch([1, 2, 3], matched, 16)
    return req


def no_hit_lru(**params: object) -> NoHitLruScorer:
    scorer = plugin(NoHitLruScorer, params)
    scorer.bind_producer(PREFIX_MATCH, "producer")
    return scorer


def test_warm_requests_score_half_everywhere() -> None:
    scorer = no_hit_lru()
    a, b = endpoints(2)
    assert scorer.score(with_match(request(), {b: 2}), [a, b]) == [0.5, 0.5]


def test_cold_requests_prefer_never_used_then_least_recently_used() -> None:
    scorer = no_hit_lru()
    a, b, c, d = endpoints(4)
    outsider = endpoint("outsider")
    first = with_match(request(), {outsider: 3})  # hits only on a non-candidate: still cold
    assert scorer.score(first, [a, b, c, d]) == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0]
    scorer.pre_request(first, result(c))
    second = with_match(request(), {})
    scorer.score(second, [a, b, c, d])
    scorer.pre_request(second, result(a))
    # never used b, d first (candidate order), then c (older), then a (newest)
    assert scorer.score(with_match(request(), {}), [a, b, c, d]) == [
        0.0,
        1.0,
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
    ]


def test_a_candidate_matched_with_zero_blocks_is_no_hit() -> None:
    scorer = no_hit_lru()
    a, b = endpoints(2)
    assert scorer.score(with_match(request(), {b: 0, endpoint("outsider"): 4}), [a, b]) == [1.0, 0.0]
    assert scorer.score(with_match(request(), {b: 0, a: 1}), [a, b]) == [0.5, 0.5]


def test_no_hit_lru_single_candidate_and_missing_data() -> None:
    scorer = no_hit_lru()
    assert scorer.score(request(), endpoints(1)) == [1.0]
    assert scorer.score(request(), endpoints(2)) == [1.0, 0.0]


def test_no_hit_lru_warm_requests_do_not_touch_the_lru_and_size_is_bounded() -> None:
    scorer = no_hit_lru(lruSize=2)
    a, b, c = endpoints(3)
    warm = with_match(request(), {a: 1})
    scorer.score(warm, [a, b, c])
    scorer.pre_request(warm, result(a))
    assert list(scorer.recent) == []
    for chosen in (a, b, c):
        cold = with_match(request(), {})
        scorer.score(cold, [a, b, c])
        scorer.pre_request(cold, result(chosen, prefill=chosen))
    assert list(scorer.recent) == ["e1", "e2"]
    scorer.endpoint_removed(b)
    assert list(scorer.recent) == ["e2"]


# --- single-profile-handler -----------------------------------------------------------------------


def test_single_profile_handler_runs_every_profile_once_then_stops() -> None:
    handler = plugin(SingleProfileHandler)
    assert handler.pick_profiles(request(), ("default",), {}) == ("default",)
    assert handler.pick_profiles(request(), ("default",), {"default": None}) == ()


def test_single_profile_handler_result_and_failures() -> None:
    handler = plugin(SingleProfileHandler)
    a = endpoint("a")
    routed = handler.process_results(request(), {"only": ProfileResult([a])})
    assert routed.primary_profile == "only" and routed.targets == [a]
    with pytest.raises(SchedulingError, match="found no endpoint"):
        handler.process_results(request(), {"only": None})
    with pytest.raises(SchedulingError, match="exactly one profile result, got 2"):
        handler.process_results(request(), {"x": ProfileResult([a]), "y": ProfileResult([a])})
