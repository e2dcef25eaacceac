"""Flow control when the pool has endpoints but none the EPP would route to (every one unhealthy,
its scrapes failing, or suspended after the data plane reported it unreachable): as GIE, whose
pool is the ready pods (a pod failing its readiness leaves it) and whose utilization detector
reads a pod with stale metrics as full, the pool reads as saturated, so a request waits in its
queue until an endpoint recovers (dispatched then) or its TTL ends (503), rather than failing at
once. A request whose own subset hint matches no endpoint, on a pool with room, is dispatched and
gets its 503 at once. Drives the real ext_proc server over gRPC."""

from __future__ import annotations

import time

from tests.unit.extproc.test_extproc_stream import subset_metadata
from tests.unit.flowcontrol.test_flow_control import (
    body_msg,
    headers_msg,
    make_harness,
    read,
    refused,
    routed,
)


async def test_a_pool_of_unhealthy_endpoints_queues_until_one_recovers() -> None:
    h, server, channel = await make_harness(ttl="30s")
    try:
        h.add()
        endpoint = h.datastore.get("a")
        assert endpoint is not None
        endpoint.healthy = False  # its scrapes fail
        call = await h.send()
        await h.wait_queued(1)
        endpoint.healthy = True  # a scrape answered again
        await routed(call)
        assert endpoint.inflight_requests == 1 and h.queue_count("Dispatched") == 1
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()


async def test_a_pool_of_suspended_endpoints_queues_until_the_ttl_then_503() -> None:
    h, server, channel = await make_harness(ttl="200ms")
    try:
        h.add()
        endpoint = h.datastore.get("a")
        assert endpoint is not None
        endpoint.suspended_until = time.monotonic() + 10  # the data plane saw it fail
        call = await h.send()
        await h.wait_queued(1)
        status, message = await refused(call)
        assert status == 503
        assert message == (
            "inference error: ServiceUnavailable - request timed out in queue: "
            "request evicted from queue: request TTL expired"
        )
        assert h.queue_count("EvictedTTL") == 1 and h.flow_control.length == 0
        assert endpoint.inflight_requests == 0
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()


async def test_a_subset_hint_that_matches_no_endpoint_is_a_prompt_503() -> None:
    h, server, channel = await make_harness(ttl="30s")
    try:
        h.add()
        call = h.stub.Process()
        headers = headers_msg({})
        headers.metadata_context.CopyFrom(subset_metadata(["10.9.9.9:8000"]))
        await call.write(headers)
        assert (await read(call)).WhichOneof("response") == "request_headers"
        await call.write(body_msg(b'{"model": "m", "prompt": "hi"}'))
        status, message = await refused(call)
        assert status == 503
        assert message == (
            "inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request"
        )
        assert h.queue_count("Dispatched") == 1 and h.flow_control.length == 0
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()
