"""`llm_d_epp_request_processing_duration_seconds` (llm-d router's): each request observed once,
from its headers until its body is handled: routed, refused (a bad request, flow control's
refusal, its queue wait included), or its client gone while it waited in flow control. The
response's phase adds nothing."""

from __future__ import annotations

import asyncio

from epp.extproc.pb import BodyMode
from epp.metrics.exporter import EppMetrics
from tests.unit.extproc.test_extproc_stream import (
    COMPLETION,
    Harness,
    body_msg,
    harness,  # noqa: F401 (the fixture)
    headers_msg,
    read,
    response_body_msg,
    response_headers_msg,
)
from tests.unit.flowcontrol.test_flow_control import make_harness, routed

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
