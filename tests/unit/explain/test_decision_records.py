"""Decision records: what every profile did, kept for sampled requests in a bounded ring."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from pathlib import Path
from types import MappingProxyType

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.explain import DecisionRecorder, RecordOptions, records
from epp.framework import PluginContext
from epp.requestcontrol import Director
from epp.requests import RequestError

PD_SAMPLE = Path(__file__).parents[3] / "epp" / "config" / "samples" / "sim-pd-epp-config.yaml"

# A filter that removes the prefill pods, two weighted scorers, a picker that keeps fallbacks.
CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: decode-filter
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
  parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
  - pluginRef: max-score-picker
"""


DEFAULT_OPTIONS = RecordOptions()


def director(
    options: RecordOptions | None = DEFAULT_OPTIONS, config: str = CONFIG, prefill: int = 1
) -> Director:
    """Two decode pods (pod-0, pod-1) and `prefill` prefill pods (pod-2, ...)."""
    datastore = Datastore()
    pods = [("decode", 0, 0.5), ("decode", 4, 0.0)] + [("prefill", 0, 0.0)] * prefill
    for i, (role, queue, kv) in enumerate(pods):
        endpoint = datastore.upsert(
            EndpointSpec(
                name=f"pod-{i}",
                address=f"10.0.0.{i + 1}",
                port=8000,
                labels=MappingProxyType({"llm-d.ai/role": role}),
            )
        )
        endpoint.metrics.waiting_queue_size = queue
        endpoint.metrics.kv_cache_usage = kv
    built, _ = build_director(load_config(config), datastore, PluginContext())
    if options is not None:
        built.recorder = DecisionRecorder(options, random.Random(1))
    return built


def body(prompt: str = "hello there") -> bytes:
    return orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 4})


def test_a_record_says_what_every_filter_scorer_and_the_picker_did() -> None:
    d = director()
    routed = d.handle_body(body(), {":path": "/v1/completions", "x-request-id": "r1"}, None)
    assert d.recorder is not None and routed.record is not None
    [record] = d.recorder.by_request_id("r1")
    data = record.to_json()
    assert data["candidates"] == ["pod-0", "pod-1", "pod-2"]
    assert data["admission"] == "admitted" and data["outcome"] == "routed" and data["error"] is None
    [profile] = data["profiles"]
    assert profile["filters"][0]["plugin"] == "decode-filter"
    assert profile["filters"][0]["removed"] == ["pod-2"] and profile["filters"][0]["kept"] == 2
    assert [(s["plugin"], s["weight"]) for s in profile["scorers"]] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 1.0),
    ]
    by_name = {e["endpoint"]: e for e in profile["endpoints"]}
    # queue: pod-0 has the shortest queue (1.0), pod-1 the longest (0.0); kv: 1 - utilisation.
    assert by_name["pod-0"]["scores"] == {"queue-scorer": 1.0, "kv-cache-utilization-scorer": 0.5}
    assert by_name["pod-0"]["total"] == pytest.approx(2.5)
    assert by_name["pod-1"]["total"] == pytest.approx(1.0)
    assert [e["endpoint"] for e in profile["endpoints"]] == ["pod-0", "pod-1"]  # best first
    assert profile["picked"] == ["pod-0", "pod-1"] and profile["picker"]["type"] == "max-score-picker"
    assert data["destination"] == {"endpoint": "pod-0", "address": "10.0.0.1:8000"}
    assert data["fallbacks"] == [{"endpoint": "pod-1", "address": "10.0.0.2:8000"}]
    assert data["pd"] is None and "prompt" not in data
    assert data["schedule_seconds"] > 0 and profile["seconds"] > 0
    routed.response_started(200, False)
    routed.finish()
    assert record.to_json()["response"]["status"] == 200
    orjson.dumps(record.to_json())  # JSON all the way down
    # Committed, a record holds names and numbers only, in tuples the collector stops tracking
    # (all but the two named tuples themselves): a full ring adds little to each collection.
    for _ in range(3):  # tuples of tuples: the innermost first, one level per pass
        gc.collect()
    frozen = record.freeze()
    profile_record = frozen.profiles[0]
    for part in (frozen.candidates, frozen.fallbacks, profile_record.scorers, profile_record.scored):
        assert not gc.is_tracked(part)
    assert record.candidates == () and record.destination is None


def test_a_refused_request_is_recorded_with_its_error() -> None:
    d = director()
    for endpoint in d.datastore.endpoints():
        if endpoint.role == "decode":
            d.datastore.remove(endpoint.name)
    with pytest.raises(RequestError):
        d.handle_body(body(), {":path": "/v1/completions", "x-request-id": "r2"}, None)
    assert d.recorder is not None
    [record] = d.recorder.by_request_id("r2")
    data = record.to_json()
    assert data["outcome"] == "refused" and data["error"]["status"] == 429
    assert data["profiles"][0]["failed"] and data["profiles"][0]["filters"][0]["removed"] == ["pod-2"]


def test_sampling_off_keeps_nothing_and_the_ring_is_bounded() -> None:
    d = director(RecordOptions(capacity=3, sample_rate=0.0))
    assert d.recorder is not None
    d.handle_body(body(), {":path": "/v1/completions"}, None)
    assert len(d.recorder) == 0
    d = director(RecordOptions(capacity=3))
    assert d.recorder is not None
    for i in range(5):
        d.handle_body(body(), {":path": "/v1/completions", "x-request-id": f"r{i}"}, None)
    assert [r.request_id for r in d.recorder] == ["r4", "r3", "r2"]
    assert [r.request_id for r in d.recorder.since(d.recorder.last_seq - 1)] == ["r4"]
    assert {r.destination_name for r in d.recorder.recent(10, "pod-0")} == {"pod-0"}
    assert d.recorder.recent(10, "pod-2") == []  # filtered out every time, never chosen


def test_the_sample_rate_is_a_fraction_of_requests() -> None:
    recorder = DecisionRecorder(RecordOptions(capacity=10, sample_rate=0.25), random.Random(7))
    sampled = sum(recorder.start("r", "m", "m", "completions", forced=False) is not None for _ in range(4000))
    assert 800 < sampled < 1200
    assert recorder.start("r", "m", "m", "completions", forced=True) is not None


def test_the_explanation_header_only_when_the_operator_allows_it() -> None:
    asked = {":path": "/v1/completions", "x-epp-explain": "true"}
    routed = director().handle_body(body(), asked, None)
    assert "x-epp-explanation" not in routed.result.response_headers
    d = director(RecordOptions(sample_rate=0.0, explain_header=True))
    routed = d.handle_body(body(), asked, None)
    explanation = json.loads(routed.result.response_headers["x-epp-explanation"])
    assert explanation["destination"]["endpoint"] == "pod-0"
    assert explanation["profiles"][0]["removed"] == {"decode-filter": {"count": 1, "endpoints": ["pod-2"]}}
    assert explanation["profiles"][0]["endpoints"][0]["scores"]["queue-scorer"] == 1.0
    routed = d.handle_body(body(), {":path": "/v1/completions"}, None)
    assert "x-epp-explanation" not in routed.result.response_headers


def test_the_explanation_header_names_a_few_of_the_endpoints_a_filter_removed() -> None:
    """The header is the decision's short form: a filter's removed endpoints are counted, and the
    first 8 named, as its endpoints are the top 8. Every name was listed: a P/D pool of 1,000 pods
    with 60-character names gave each explained response a 60 KB header (76 KB through Envoy with
    300 pods of 250-character names), past what proxies and clients read (nginx: 4-8 KB)."""
    d = director(RecordOptions(explain_header=True), prefill=300)
    routed = d.handle_body(body(), {":path": "/v1/completions", "x-epp-explain": "true"}, None)
    header = routed.result.response_headers["x-epp-explanation"]
    removed = json.loads(header)["profiles"][0]["removed"]["decode-filter"]
    assert removed == {"count": 300, "endpoints": [f"pod-{i}" for i in range(2, 10)]}
    assert len(header) < 2000


def test_prompts_only_when_enabled() -> None:
    d = director(RecordOptions(record_prompts=True))
    d.handle_body(body("the secret prompt"), {":path": "/v1/completions", "x-request-id": "p"}, None)
    assert d.recorder is not None
    assert d.recorder.by_request_id("p")[0].to_json()["prompt"] == "the secret prompt"


def test_without_a_recorder_the_director_keeps_nothing() -> None:
    d = director(None)
    routed = d.handle_body(body(), {":path": "/v1/completions"}, None)
    assert routed.record is None


def test_pd_decisions_are_recorded() -> None:
    d = director(config=PD_SAMPLE.read_text())
    long_prompt = "a long prompt nobody has cached yet " * 20
    d.handle_body(body(long_prompt), {":path": "/v1/completions", "x-request-id": "pd"}, None)
    assert d.recorder is not None
    data = d.recorder.by_request_id("pd")[0].to_json()
    assert data["pd"] == {
        "decision": "prefill-decode",
        "prefill": {"endpoint": "pod-2", "address": "10.0.0.3:8000"},
    }
    assert [p["name"] for p in data["profiles"]] == ["decode", "prefill"]
    # The same prompt again: its blocks are cached on the decode pod now, so no remote prefill.
    d.handle_body(body(long_prompt), {":path": "/v1/completions", "x-request-id": "pd2"}, None)
    data = d.recorder.by_request_id("pd2")[0].to_json()
    assert data["pd"] == {"decision": "decode-only", "prefill": None}
    assert [p["name"] for p in data["profiles"]] == ["decode"]


def test_an_unsampled_request_allocates_nothing_for_records() -> None:
    """Sampling off for a request: no record, no profile record, nothing per candidate."""
    d = director(RecordOptions(sample_rate=0.0))
    d.handle_body(body(), {":path": "/v1/completions"}, None).finish()  # warm caches
    tracemalloc.start()
    try:
        for _ in range(50):
            d.handle_body(body(), {":path": "/v1/completions"}, None).finish()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    records_file = tracemalloc.Filter(True, records.__file__)
    assert snapshot.filter_traces([records_file]).statistics("filename") == []
    assert d.recorder is not None and len(d.recorder) == 0


def in_flight(d: Director) -> int:
    return sum(e.inflight_requests for e in d.datastore.endpoints())


def test_a_listener_that_raises_loses_no_load(caplog: pytest.LogCaptureFixture) -> None:
    d = director()
    assert d.recorder is not None
    calls: list[int] = []

    def broken() -> None:
        calls.append(d.recorder.last_seq if d.recorder is not None else 0)
        raise RuntimeError("broken listener")

    d.recorder.subscribe(broken)
    # Routed: the listener's error is logged, the request keeps its route and its record.
    routed = d.handle_body(body(), {":path": "/v1/completions", "x-request-id": "r1"}, None)
    assert routed.result.targets[0].name == "pod-0" and in_flight(d) == 1
    assert [r.request_id for r in d.recorder.recent()] == ["r1"] and calls == [1]
    assert "a decision-record listener failed" in caplog.text and "broken listener" in caplog.text
    routed.finish()
    assert in_flight(d) == 0
    # Refused: the request's own error is what the client gets, and no load was taken.
    for endpoint in d.datastore.endpoints():
        if endpoint.role == "decode":
            d.datastore.remove(endpoint.name)
    with pytest.raises(RequestError) as refused:
        d.handle_body(body(), {":path": "/v1/completions", "x-request-id": "r2"}, None)
    assert refused.value.status == 429 and "failed to find target endpoint" in refused.value.message
    assert in_flight(d) == 0 and calls == [1, 2]


def test_a_record_that_fails_to_commit_releases_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    d = director()
    assert d.recorder is not None

    def broken(record: object) -> None:
        raise RuntimeError("commit failed")

    monkeypatch.setattr(d.recorder, "commit", broken)
    with pytest.raises(RuntimeError, match="commit failed"):
        d.handle_body(body(), {":path": "/v1/completions", "x-request-id": "r1"}, None)
    assert in_flight(d) == 0


def _held_by_records(model_bytes: int) -> int:
    """Bytes the ring still holds after 200 routed requests, each naming a new model of
    `model_bytes` characters (with a request id and objective as long)."""
    d = director()

    def one(i: int) -> None:
        name = f"{i}-".ljust(model_bytes, "x")
        request = orjson.dumps({"model": name, "prompt": "hello", "max_tokens": 4})
        headers = {":path": "/v1/completions", "x-request-id": name, "x-gateway-inference-objective": name}
        d.handle_body(request, headers, None).finish()

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(200):
        one(i)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert d.recorder is not None and len(d.recorder) == 200
    return held


def test_records_keep_a_bounded_prefix_of_client_named_strings() -> None:
    """Model names, request ids and objectives come from clients, and the ring keeps its last
    1,000 records: whole 16 MB model names would hold 16 GB. Records keep a prefix of each, so 200
    requests with 50,000-character names hold no more than with 300-character ones (same run)."""
    short = _held_by_records(300)
    assert _held_by_records(50_000) <= 1.5 * short


def test_long_request_ids_sharing_a_prefix_keep_their_own_records() -> None:
    """A request id over the kept length is shortened to a form unique to it: the records of one
    are not returned for another with the same first characters (both were cut to one prefix),
    and the shortened id a record shows finds it again."""
    d = director()
    first, second = "a" * 300, "a" * 299 + "b"
    for request_id in (first, second):
        request = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})
        d.handle_body(request, {":path": "/v1/completions", "x-request-id": request_id}, None).finish()
    assert d.recorder is not None
    (found,) = d.recorder.by_request_id(first)
    assert len(found.request_id) <= records.TEXT_LIMIT and found.request_id.startswith("a" * 200)
    assert d.recorder.by_request_id(found.request_id) == [found]
    (other,) = d.recorder.by_request_id(second)
    assert other is not found
