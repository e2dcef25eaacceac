"""In-flight eviction (llm-d router's `flowControl.enableEviction`) through the real path: Envoy's
ext_proc messages over gRPC into the EPP, the flow controller's dispatch loop, the reclamation
controller and the eviction policies. A sheddable request in flight fills the pool; a critical one
queues; the sheddable one is evicted (429 with llm-d's message and header) and the critical one
goes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import grpc
import orjson
import pytest

from epp.config.loader import load_config
from epp.extproc import server as extproc_server
from epp.extproc.pb import ext_proc
from epp.extproc.server import ExternalProcessor
from epp.extproc.stream import StreamOptions
from epp.flowcontrol.reclamation import LEADING_SENSOR_GRACE
from tests.unit.extproc.test_stream_end import Context
from tests.unit.flowcontrol.flow_helpers import flow_control_config
from tests.unit.flowcontrol.test_flow_control import (
    Harness,
    body_msg,
    finish,
    headers_msg,
    make_harness,
    read,
    response_headers,
    routed,
)

CONFIG = flow_control_config({"enableEviction": True})
OBJECTIVES = {"critical": 10, "standard": 0, "batch": -1}


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h, server, channel = await make_harness(objectives=OBJECTIVES, config_text=CONFIG)
    h.add()
    yield h
    await channel.close()
    await server.stop(0)
    await h.flow_control.stop()


def revocations(h: Harness, outcome: str) -> float:
    return h.sample("llm_d_epp_flow_control_revocations_total", outcome=outcome, inference_pool="standalone")


async def test_a_sheddable_request_in_flight_is_evicted_for_a_critical_one(harness: Harness) -> None:
    assert load_config(CONFIG).warnings == ()  # enableEviction is implemented, not ignored
    batch = await harness.send("tenant-b", "batch")
    await routed(batch)
    critical = await harness.send("tenant-c", "critical")

    reply = await read(critical, timeout=5.0)  # the critical request is routed once batch's stream ends
    assert reply.WhichOneof("response") == "request_body", reply

    evicted = await read(batch)
    assert evicted.WhichOneof("response") == "immediate_response", evicted
    answer = evicted.immediate_response
    assert answer.status.code == 429
    headers = {h.header.key: h.header.raw_value.decode() for h in answer.headers.set_headers}
    assert headers["x-llm-d-request-dropped-reason"] == "evicted"
    assert orjson.loads(answer.body)["error"]["message"] == (
        "inference error: ResourceExhausted - request evicted by flow control"
    )
    assert harness.sample(
        "llm_d_epp_flow_control_revocations_issued_total", priority="10", inference_pool="standalone"
    ) == (1.0)
    assert revocations(harness, "confirmed") == 1.0
    assert revocations(harness, "timed_out") == 0.0
    assert harness.sample(
        "llm_d_epp_flow_control_revocation_confirmation_seconds_count", inference_pool="standalone"
    ) == (1.0)
    # The reclaim target was the deficit at the ceiling: saturation 1.0 - ceiling 1.0.
    assert harness.sample("llm_d_epp_flow_control_reclaim_target", inference_pool="standalone") == 0.0
    reclamation = harness.flow_control.reclamation
    assert reclamation is not None and reclamation.grace == LEADING_SENSOR_GRACE
    assert harness.datastore.get("a").inflight_requests == 1  # type: ignore[union-attr]  # critical only
    await finish(critical)
    assert reclamation.evictor.in_flight == {}


async def cycles_pass(h: Harness, count: int) -> None:
    """Wait until the dispatch loop has run `count` more cycles (bounded)."""
    name = "inference_extension_flow_control_dispatch_cycle_duration_seconds_count"
    start = h.sample(name)
    for _ in range(1000):
        if h.sample(name) >= start + count:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"the dispatch loop ran {h.sample(name) - start} cycles, expected {count}")


@pytest.mark.parametrize(
    ("running", "waiting"),
    [("standard", "critical"), ("batch", "batch")],  # not sheddable; or not of a higher priority
)
async def test_no_eviction_without_a_sheddable_request_of_lower_priority(
    harness: Harness, running: str, waiting: str
) -> None:
    holder = await harness.send("a", running)
    await routed(holder)
    queued = await harness.send("b", waiting)
    await harness.wait_queued(1)
    await cycles_pass(harness, 20)
    assert harness.flow_control.length == 1
    assert revocations(harness, "confirmed") == 0.0
    await finish(holder)
    await routed(queued)
    await finish(queued)


async def test_a_completed_response_is_not_evicted_and_leaves_nothing_tracked(harness: Harness) -> None:
    batch = await harness.send("b", "batch")
    await routed(batch)
    await finish(batch)
    reclamation = harness.flow_control.reclamation
    assert reclamation is not None
    assert reclamation.evictor.in_flight == {} and reclamation.evictor.victim_priority() is None


@pytest.mark.parametrize(("policy", "method"), [("filter", "accept"), ("ordering", "key")])
async def test_an_eviction_policy_that_raises_leaves_no_load_and_nothing_tracked(
    harness: Harness, policy: str, method: str
) -> None:
    """Tracking runs after the endpoint took the request's load: a policy plugin raising there
    left the endpoint loaded for good (the stream had no routed request to release) and the
    request tracked as in flight, evictable by nobody."""
    reclamation = harness.flow_control.reclamation
    assert reclamation is not None

    def broken(item: object) -> bool:
        raise RuntimeError(f"broken {policy}")

    setattr(getattr(reclamation.evictor, policy), method, broken)
    call = await harness.send("tenant-b", "batch")
    reply = await read(call)
    assert reply.immediate_response.status.code == 500
    assert orjson.loads(reply.immediate_response.body)["error"]["message"] == (
        "inference error: Internal - the endpoint picker failed to process the request"
    )
    assert harness.datastore.get("a").inflight_requests == 0  # type: ignore[union-attr]
    assert reclamation.evictor.in_flight == {}
    assert reclamation.evictor.evictable == 0


@pytest.mark.parametrize("objective", ["batch", "standard"], ids=["evictable", "not-evictable"])
async def test_a_streamed_response_half_closed_waits_for_the_reset_evictable_or_not(
    harness: Harness, objective: str
) -> None:
    """A streamed response's stream is half-closed by Envoy after the response headers (it sends
    no chunks) and reset at once; the stream waits GATEWAY_CLOSE_WAIT for that reset instead of
    sending a status into it (grpc.aio leaks the failed batch), whether or not flow control may
    still evict the request (an evictable request's reads also watch for its eviction)."""
    call = await harness.send("tenant", objective)
    await routed(call)
    reclamation = harness.flow_control.reclamation
    assert reclamation is not None
    assert any(item.evictable for item in reclamation.evictor.in_flight.values()) is (objective == "batch")
    await call.write(response_headers(b"text/event-stream"))
    assert (await read(call)).WhichOneof("response") == "response_headers"
    await call.done_writing()  # Envoy's half-close
    status = asyncio.ensure_future(call.code())
    done, _ = await asyncio.wait([status], timeout=extproc_server.GATEWAY_CLOSE_WAIT / 2)
    assert not done, "the stream sent its status before the gateway could reset it"
    assert harness.datastore.get("a").inflight_requests == 0  # type: ignore[union-attr]
    assert await asyncio.wait_for(status, timeout=5.0) == grpc.StatusCode.OK


async def test_an_eviction_landing_with_the_streams_end_is_not_answered(harness: Harness) -> None:
    """Envoy half-closes a streamed response's stream when the response ends (the EPP asked it to
    skip the chunks), and flow control evicts the request in that same instant: the request is
    over, so the stream answers no 429 into its end; the eviction is confirmed by that end and
    the endpoint's load is released once."""
    reclamation = harness.flow_control.reclamation
    assert reclamation is not None
    evictor = reclamation.evictor
    evicted: list[str] = []

    async def envoy() -> AsyncIterator[ext_proc.ProcessingRequest]:
        yield headers_msg({"x-gateway-inference-objective": "batch", "x-request-id": "r1"})
        yield body_msg(orjson.dumps({"model": "m", "prompt": "hi"}))
        yield response_headers(b"text/event-stream")
        # The dispatch loop's decision (saturation 1.0 over a ceiling of 0.5), then the end.
        evicted.extend(reclamation.reclaim(1.0, 0.5, 100))

    context = Context()
    handler = ExternalProcessor(harness.director, StreamOptions()).Process(
        envoy(), cast(grpc.aio.ServicerContext, context)
    )
    await asyncio.wait_for(handler, timeout=5.0)
    replies = [context.sent.get_nowait().WhichOneof("response") for _ in range(context.sent.qsize())]
    assert evicted == ["r1"], "the eviction did land on the routed request"
    assert replies == ["request_headers", "request_body", "response_headers"]
    assert harness.datastore.get("a").inflight_requests == 0  # type: ignore[union-attr]
    assert evictor.in_flight == {} and evictor.evictable == 0
    assert revocations(harness, "confirmed") == 1.0
