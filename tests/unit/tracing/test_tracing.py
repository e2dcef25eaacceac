"""Tracing at the unit level: the SDK's in-memory exporter behind a real ext_proc stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import StatusCode

from epp import tracing
from epp.config.build import build_director
from epp.config.loader import load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.extproc.pb import BodyMode, core, ext_proc
from epp.extproc.stream import ExtProcStream, StreamOptions
from epp.framework import PluginContext
from epp.requestcontrol import Director
from epp.tracing.spans import Tracing, exporter_from_environment, sampler_from_environment

PD_SAMPLE = Path(__file__).parents[3] / "epp" / "config" / "samples" / "sim-pd-epp-config.yaml"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(Tracing(SimpleSpanProcessor(exporter), ALWAYS_ON))
    try:
        yield exporter
    finally:
        tracing.install(None)


def pd_director() -> Director:
    datastore = Datastore()
    for i, role in enumerate(("decode", "prefill")):
        datastore.upsert(
            EndpointSpec(f"{role}-0", f"10.0.0.{i + 1}", 8000, MappingProxyType({"llm-d.ai/role": role}))
        )
    return build_director(load_config_file(PD_SAMPLE), datastore, PluginContext())[0]


def headers(extra: dict[str, str]) -> ext_proc.ProcessingRequest:
    pairs = {":path": "/v1/completions", ":method": "POST", **extra}
    mode = BodyMode.FULL_DUPLEX_STREAMED
    return ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=core.HeaderMap(
                headers=[core.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
            )
        ),
        protocol_config=ext_proc.ProtocolConfiguration(request_body_mode=mode, response_body_mode=mode),
    )


def exchange(
    director: Director, extra: dict[str, str], prompt: str = "tell me a story " * 10
) -> dict[str, str]:
    """One request through the stream, answered 200; the headers set on the forwarded request."""
    stream = ExtProcStream(director, StreamOptions())
    list(stream.handle(headers(extra)))
    body = orjson.dumps({"model": "m", "prompt": prompt})
    message = ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=True))
    first = next(iter(stream.handle(message)))
    forwarded = {
        h.header.key: h.header.raw_value.decode()
        for h in first.request_headers.response.header_mutation.set_headers
    }
    status = core.HeaderMap(headers=[core.HeaderValue(key=":status", raw_value=b"200")])
    list(stream.handle(ext_proc.ProcessingRequest(response_headers=ext_proc.HttpHeaders(headers=status))))
    end = ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=b"{}", end_of_stream=True))
    list(stream.handle(end))
    stream.close()
    return forwarded


def test_spans_continue_the_clients_trace_and_reach_the_model_server(spans: InMemorySpanExporter) -> None:
    forwarded = exchange(
        pd_director(),
        {"traceparent": CLIENT_PARENT, "tracestate": "vendor=1", "baggage": "tenant=a", "x-request-id": "t1"},
    )
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {
        "epp.request",
        "epp.parse",
        "epp.admission",
        "epp.schedule",
        "epp.profile",
        "epp.response",
    }
    root = finished["epp.request"]
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert root.attributes is not None and root.attributes["epp.request_id"] == "t1"
    assert root.attributes["epp.destination"] == "10.0.0.1:8000"
    for name in ("epp.parse", "epp.admission", "epp.schedule", "epp.response"):
        assert finished[name].parent is not None and finished[name].parent.span_id == root.context.span_id
    profiles = [s for s in spans.get_finished_spans() if s.name == "epp.profile"]
    assert [p.attributes["epp.profile"] for p in profiles if p.attributes] == ["decode", "prefill"]
    assert all(p.parent and p.parent.span_id == finished["epp.schedule"].context.span_id for p in profiles)
    # The model server continues the EPP's span, in the same trace.
    assert forwarded["traceparent"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"
    assert forwarded["tracestate"] == "vendor=1" and forwarded["baggage"] == "tenant=a"
    assert "x-prefiller-host-port" in forwarded


def test_a_request_without_traceparent_starts_a_trace(spans: InMemorySpanExporter) -> None:
    forwarded = exchange(pd_director(), {})
    root = next(s for s in spans.get_finished_spans() if s.name == "epp.request")
    assert root.parent is None
    assert forwarded["traceparent"].split("-")[1] == format(root.context.trace_id, "032x")


def test_a_refused_request_ends_its_span_with_an_error(spans: InMemorySpanExporter) -> None:
    director = pd_director()
    stream = ExtProcStream(director, StreamOptions())
    list(stream.handle(headers({})))
    bad = ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=b"not json", end_of_stream=True))
    [reply] = stream.handle(bad)
    assert reply.immediate_response.status.code == 400
    stream.close()
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["epp.parse"].status.status_code is StatusCode.ERROR
    assert finished["epp.request"].status.status_code is StatusCode.ERROR


def test_tracing_off_costs_a_check_and_sets_no_header() -> None:
    assert tracing.active is None
    forwarded = exchange(pd_director(), {"traceparent": CLIENT_PARENT})
    assert "traceparent" not in forwarded


def test_environment_follows_gies_defaults() -> None:
    assert type(exporter_from_environment({})).__name__ == "ConsoleSpanExporter"
    assert exporter_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    http = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert type(exporter_from_environment(http)).__module__.endswith("proto.http.trace_exporter")
    grpc = exporter_from_environment({"OTEL_TRACES_EXPORTER": "otlp"})
    assert grpc is not None and type(grpc).__module__.endswith("proto.grpc.trace_exporter")
    grpc.shutdown()
    with pytest.raises(ValueError, match="zipkin"):
        exporter_from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
    sampler = sampler_from_environment({})
    assert isinstance(sampler, ParentBased)
    assert TraceIdRatioBased(0.1).get_description() in sampler.get_description()
    assert sampler_from_environment({"OTEL_TRACES_SAMPLER": "always_on"}) is None


def test_an_unsampled_request_costs_one_span_start_and_keeps_the_clients_traceparent() -> None:
    exporter = InMemorySpanExporter()
    tracing.install(Tracing(SimpleSpanProcessor(exporter), ParentBased(ALWAYS_ON)))
    try:
        unsampled_parent = f"00-{TRACE_ID}-00f067aa0ba902b7-00"
        assert tracing.start_request({"traceparent": unsampled_parent}) is None
        forwarded = exchange(pd_director(), {"traceparent": unsampled_parent})
        assert "traceparent" not in forwarded  # Envoy forwards the client's header as it came
        assert exporter.get_finished_spans() == ()
    finally:
        tracing.install(None)
