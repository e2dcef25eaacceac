"""llm-d router's per-request metrics the ext_proc stream records.

`llm_d_epp_request_processing_duration_seconds`: each request observed once, from its headers
until its body is handled: routed, refused (a bad request, flow control's refusal, its queue wait
included), or its client gone while it waited in flow control. The response's phase adds nothing.

The response latencies, from the response chunks the EPP reads (here a FULL_DUPLEX_STREAMED
response, whose chunks it always sees): `llm_d_epp_request_ttft_seconds{..., streaming}` from the
request's arrival to its first response byte, recorded when the response ends whole; for a
streamed (SSE) response also `llm_d_epp_request_streaming_itl_seconds` between consecutive chunks
and `llm_d_epp_request_streaming_tpot_seconds` = (end - first byte) / (output tokens - 1). A
streamed response whose chunks the EPP skips (BUFFERED mode, the default) has none: nothing is
guessed."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import CollectorRegistry

from epp.extproc.pb import BodyMode, ext_proc
from epp.metrics.exporter import EppMetrics
from epp.metrics.latency import MAX_SERIES, ResponseLatencies
from epp.plugins.previous_response_affinity_filter import PreviousResponseAffinityFilter, response_key
from tests.unit.extproc.test_extproc_stream import (
    COMPLETION,
    Harness,
    body_msg,
    harness,  # noqa: F401 (the fixture)
    headers_msg,
    read,
    response_body_msg,
    response_headers_msg,
    served,
    streaming_request,
    whole_response_request,
)
from tests.unit.flowcontrol.test_flow_control import make_harness, routed
from tests.unit.plugins.test_plugins_previous_response_affinity_filter import replica

LABELS = {"model_name": "m", "target_model_name": "m", "fairness_id": "default-flow", "priority": "0"}
SSE = [
    b'data: {"object":"text_completion","choices":[{"text":"a"}]}\n\n',
    b'data: {"object":"text_completion","choices":[{"text":"b"}]}\n\n',
    b'data: {"object":"text_completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3,'
    b'"total_tokens":6}}\n\ndata: [DONE]\n\n',
]


def value(h: Harness, name: str, **labels: str) -> float | None:
    return h.director.metrics.registry.get_sample_value(f"llm_d_epp_request_{name}", labels)


async def test_a_streamed_response_has_its_ttft_chunk_gaps_and_time_per_token(harness: Harness) -> None:  # noqa: F811
    call, _ = await streaming_request(harness)
    for i, chunk in enumerate(SSE):
        await asyncio.sleep(0.02)
        await call.write(response_body_msg(chunk, end_of_stream=i == len(SSE) - 1))
        await read(call)
    assert value(harness, "ttft_seconds_count", streaming="true", **LABELS) == 1
    assert (value(harness, "ttft_seconds_sum", streaming="true", **LABELS) or 0) >= 0.02
    assert value(harness, "streaming_itl_seconds_count", **LABELS) == 2  # three chunks, two gaps
    assert (value(harness, "streaming_itl_seconds_sum", **LABELS) or 0) >= 0.04
    assert value(harness, "streaming_tpot_seconds_count", **LABELS) == 1
    tpot = value(harness, "streaming_tpot_seconds_sum", **LABELS) or 0
    assert 0.02 <= tpot < 1  # (end - first byte) over 2 tokens after the first: ~0.04 / 2


async def test_a_whole_response_has_its_ttft_only(harness: Harness) -> None:  # noqa: F811
    call, _ = await whole_response_request(harness)
    body = orjson.dumps({"choices": [{"text": "x"}], "usage": {"prompt_tokens": 2, "completion_tokens": 5}})
    await call.write(response_body_msg(body, end_of_stream=True))
    await read(call)
    assert value(harness, "ttft_seconds_count", streaming="false", **LABELS) == 1
    assert value(harness, "streaming_tpot_seconds_count", **LABELS) is None
    assert value(harness, "streaming_itl_seconds_count", **LABELS) is None


async def test_a_request_that_asked_for_a_stream_is_streaming_whatever_its_response(
    harness: Harness,  # noqa: F811
) -> None:
    """llm-d's `streaming` is the request's `stream` field or an event-stream response: a streamed
    request answered with one JSON body (a server that ignores `stream`) is still `true`."""
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg())
    await call.write(body_msg(orjson.dumps({"model": "m", "prompt": "hi", "stream": True})))
    await read(call)
    await read(call)
    await call.write(response_headers_msg("application/json"))
    await read(call)
    body = orjson.dumps({"choices": [{"text": "x"}], "usage": {"prompt_tokens": 2, "completion_tokens": 5}})
    await call.write(response_body_msg(body, end_of_stream=True))
    await read(call)
    assert value(harness, "ttft_seconds_count", streaming="true", **LABELS) == 1
    assert value(harness, "ttft_seconds_count", streaming="false", **LABELS) is None


async def test_a_client_gone_mid_stream_records_no_ttft(harness: Harness) -> None:  # noqa: F811
    call, endpoint = await streaming_request(harness)
    await call.write(response_body_msg(SSE[0], end_of_stream=False))
    await read(call)
    call.cancel()
    for _ in range(200):
        if endpoint.inflight_requests == 0:
            break
        await asyncio.sleep(0.01)
    assert value(harness, "ttft_seconds_count", streaming="true", **LABELS) is None


async def test_a_streamed_response_whose_chunks_are_skipped_has_none(harness: Harness) -> None:  # noqa: F811
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(mode=BodyMode.BUFFERED))
    await read(call)
    await call.write(body_msg(orjson.dumps({"model": "m", "prompt": "hi", "stream": True})))
    await read(call)
    await call.write(response_headers_msg("text/event-stream"))
    reply = await read(call)
    assert reply.mode_override.response_body_mode == BodyMode.NONE  # Envoy stops sending them
    await call.done_writing()
    for _ in range(200):
        if harness.datastore.get("a").inflight_requests == 0:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    assert value(harness, "ttft_seconds_count", streaming="true", **LABELS) is None


def test_label_sets_past_the_cap_are_counted_as_other() -> None:
    latencies = ResponseLatencies(CollectorRegistry())
    for i in range(MAX_SERIES):
        latencies.timing((f"m{i}", "t", "f", "0"), streaming=False)
    latencies.timing(("one-too-many", "t", "f", "0"), streaming=False).ttft(0.5)
    registry_value = latencies_registry_value(latencies)
    assert registry_value == 0.5


def latencies_registry_value(latencies: ResponseLatencies) -> float | None:
    """The ttft sum of the overflow label set."""
    other = {"model_name": "other", "target_model_name": "other", "fairness_id": "other", "priority": "0"}
    for family in latencies.ttft.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum") and sample.labels == {**other, "streaming": "false"}:
                return sample.value
    return None


NAME = "llm_d_epp_request_processing_duration_seconds"


def observed(metrics: EppMetrics) -> float:
    return metrics.registry.get_sample_value(f"{NAME}_count") or 0.0


async def test_a_routed_request_is_observed_once_and_its_response_adds_nothing(harness: Harness) -> None:  # noqa: F811
    harness.add("a", 8000)
    call = harness.open()
    await call.write(headers_msg(mode=BodyMode.BUFFERED))
    await read(call)
    assert observed(harness.director.metrics) == 0  # the headers alone are not the request handled
    await call.write(body_msg(COMPLETION))
    await read(call)
    assert observed(harness.director.metrics) == 1
    await call.write(response_headers_msg("application/json"))
    await read(call)
    await call.write(response_body_msg(b'{"choices": []}', end_of_stream=True))
    await read(call)
    assert observed(harness.director.metrics) == 1


async def test_a_refused_request_and_a_bodyless_one_are_observed(harness: Harness) -> None:  # noqa: F811
    harness.add("a", 8000)
    refused = harness.open()
    await refused.write(headers_msg())
    await refused.write(body_msg(b"x" * 200_001, end_of_stream=False))  # 413
    assert (await read(refused)).immediate_response.status.code == 413
    bodyless = harness.open()
    await bodyless.write(headers_msg(path="/v1/models", method="GET", end_of_stream=True))
    await read(bodyless)
    assert observed(harness.director.metrics) == 2


async def test_a_client_gone_while_its_request_waits_in_flow_control_is_observed() -> None:
    h, server, channel = await make_harness()
    try:
        h.add()
        await routed(await h.send())  # the one endpoint is full now
        assert observed(h.metrics) == 1
        gone = await h.send()
        await h.wait_queued(1)
        await asyncio.sleep(0.05)
        gone.cancel()
        await h.wait_queued(0)
        for _ in range(200):
            if observed(h.metrics) == 2:
                break
            await asyncio.sleep(0.01)
        assert observed(h.metrics) == 2
        total = h.metrics.registry.get_sample_value(f"{NAME}_sum") or 0.0
        assert total >= 0.05  # its wait in the queue is in it
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()


RESPONSE = "llm_d_epp_response_processing_duration_seconds"


async def until_observed(h: Harness, name: str, count: float) -> float | None:
    for _ in range(200):
        found = h.director.metrics.registry.get_sample_value(f"{name}_count")
        if found == count:
            return found
        await asyncio.sleep(0.01)
    return h.director.metrics.registry.get_sample_value(f"{name}_count")


async def test_a_response_is_observed_once_when_its_stream_closes(harness: Harness) -> None:  # noqa: F811
    """`llm_d_epp_response_processing_duration_seconds`: the EPP's time handling the response's
    messages (its headers and each chunk), not the model server's time between them."""
    call, _ = await streaming_request(harness)
    for i, chunk in enumerate(SSE):
        await asyncio.sleep(0.05)  # generation time, not the EPP's
        await call.write(response_body_msg(chunk, end_of_stream=i == len(SSE) - 1))
        await read(call)
    await call.done_writing()
    assert await until_observed(harness, RESPONSE, 1) == 1
    spent = harness.director.metrics.registry.get_sample_value(f"{RESPONSE}_sum") or 0.0
    assert 0 < spent < 0.05


async def test_a_request_refused_before_its_response_has_no_response_cost(harness: Harness) -> None:  # noqa: F811
    refused = harness.open()
    await refused.write(headers_msg())
    await refused.write(body_msg(b"x" * 200_001, end_of_stream=False))
    assert (await read(refused)).immediate_response.status.code == 413
    await until_observed(harness, NAME, 1)
    assert harness.director.metrics.registry.get_sample_value(f"{RESPONSE}_count") == 0


async def test_a_request_the_epp_fails_on_is_observed(harness: Harness, monkeypatch) -> None:  # noqa: F811
    """A request whose handling raised (answered 500) is observed, as llm-d's stream observes
    every request-phase error: without it the histogram leaves out exactly the requests a plugin
    or a detector failed on."""
    harness.add("a", 8000)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a plugin failed")

    monkeypatch.setattr(harness.director, "handle_body", broken)
    call = harness.open()
    await call.write(headers_msg(mode=BodyMode.BUFFERED))
    await read(call)
    await call.write(body_msg(COMPLETION))
    assert (await read(call)).immediate_response.status.code == 500
    assert await until_observed(harness, NAME, 1) == 1


async def test_a_request_whose_saturation_detector_fails_gets_a_counted_500() -> None:
    """A detector that raises: the request is answered 500 (not the gRPC call ended with an
    error, which Envoy turns into its own 500 or, failure_mode_allow on, routes around the EPP),
    observed once in request processing and counted once by flow control (RejectedOther)."""
    h, server, channel = await make_harness()
    try:
        h.add()

        def broken(*args: object) -> float:
            raise RuntimeError("detector failed")

        h.flow_control.detector.saturation = broken  # type: ignore[method-assign]
        reply = await read(await h.send())
        assert reply.immediate_response.status.code == 500
        assert observed(h.metrics) == 1
        assert (
            h.metrics.registry.get_sample_value(
                "llm_d_epp_flow_control_requests_total",
                {"outcome": "RejectedOther", "priority": "0", "inference_pool": "standalone"},
            )
            == 1
        )
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()


async def test_a_streamed_response_ended_by_trailers_has_its_ttft_and_time_per_token(
    harness: Harness,  # noqa: F811
) -> None:
    """A response that ends with trailers (an HTTP/2 or gRPC model server; llm-d's charts have
    Envoy send them) ended whole: llm-d records its latencies at the trailers."""
    call, _ = await streaming_request(harness)
    for chunk in SSE:
        await asyncio.sleep(0.01)
        await call.write(response_body_msg(chunk, end_of_stream=False))
        await read(call)
    await call.write(ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers()))
    assert (await read(call)).WhichOneof("response") == "response_trailers"
    assert value(harness, "ttft_seconds_count", streaming="true", **LABELS) == 1
    assert value(harness, "streaming_tpot_seconds_count", **LABELS) == 1


async def test_a_bodyless_request_waiting_for_a_peers_pin_is_observed_with_its_wait() -> None:
    """GET /v1/responses/{id} beside peer replicas waits (the director's `prepare_bodyless`) for a
    peer's pin before it is routed: that wait is the request's processing as flow control's is,
    and a client gone during it is observed too (once each)."""
    director, previous, datastore = replica("peerPinWaitSeconds: 2")
    async with served(director) as stub:
        held = datastore.get("s0")
        assert held is not None
        call = stub.Process()
        await call.write(headers_msg(path="/v1/responses/resp_0", method="GET", end_of_stream=True))
        await until_waiting(previous, 1)
        await asyncio.sleep(0.1)
        previous.learn(held, [response_key("resp_0")])
        assert (await read(call)).WhichOneof("response") == "request_headers"
        assert observed(director.metrics) == 1
        waited = director.metrics.registry.get_sample_value(f"{NAME}_sum") or 0.0
        assert waited >= 0.1  # the wait for the pin is in it
        call.cancel()
        gone = stub.Process()  # a pin that never comes: its client leaves while it waits
        await gone.write(headers_msg(path="/v1/responses/resp_never", method="GET", end_of_stream=True))
        await until_waiting(previous, 1)
        gone.cancel()
        await until_waiting(previous, 0)
        for _ in range(200):
            if observed(director.metrics) == 2:
                break
            await asyncio.sleep(0.01)
        assert observed(director.metrics) == 2


async def until_waiting(previous: PreviousResponseAffinityFilter, count: int) -> None:
    """Until `count` requests wait for a peer's pin (polled, at most 2 s)."""
    for _ in range(200):
        if previous.waits.waiting == count:
            return
        await asyncio.sleep(0.01)
    assert previous.waits.waiting == count
