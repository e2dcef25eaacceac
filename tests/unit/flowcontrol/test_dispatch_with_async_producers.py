"""Flow control with an async data producer (tokenization through the model server, run after
the queue): a dispatched request is counted against the saturation detector's limit from its
dispatch, not only once its producers finish and it routes, so the dispatch loop never releases
more requests than the pool has room for. Drives the real ext_proc server over gRPC."""

from __future__ import annotations

import asyncio

from epp.datalayer import AsyncDataProducer
from epp.requests import InferenceRequest
from tests.unit.flowcontrol.test_flow_control import finish, make_harness, routed


class HeldProducer(AsyncDataProducer):
    """A producer whose every call waits until the test lets it go (a slow render API)."""

    name = "held-producer"
    type_name = "held-producer"

    def __init__(self) -> None:
        self.entered = 0
        self.go = asyncio.Event()

    async def prepare_async(self, request: InferenceRequest) -> None:
        self.entered += 1
        await self.go.wait()


async def test_a_slow_producer_does_not_let_more_requests_through_than_the_limit() -> None:
    # concurrency-detector, maxConcurrency 1, one endpoint: one request in flight fills the pool.
    h, server, channel = await make_harness(max_requests=10, ttl="30s")
    producer = HeldProducer()
    h.director.async_producers.append(producer)
    try:
        h.add()
        calls = [await h.send(prompt=f"request {i}") for i in range(3)]
        for _ in range(500):  # until every request is either preparing or queued, at most 5 s
            if producer.entered + h.flow_control.length == 3:
                break
            await asyncio.sleep(0.01)
        assert producer.entered + h.flow_control.length == 3
        for _ in range(25):  # dispatch cycles run (one each 2 ms while requests wait): none more
            await asyncio.sleep(0.002)
        assert producer.entered == 1 and h.flow_control.length == 2
        producer.go.set()
        first = calls[0]
        await routed(first)
        endpoint = h.datastore.get("a")
        assert endpoint is not None and endpoint.inflight_requests == 1
        # Its response ends: the next request is dispatched, and so on, one in flight at a time.
        await finish(first)
        await routed(calls[1])
        assert endpoint.inflight_requests == 1 and h.flow_control.length == 1
        await finish(calls[1])
        await routed(calls[2])
        await finish(calls[2])
        assert endpoint.inflight_requests == 0 and h.flow_control.length == 0
        assert producer.entered == 3
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()


async def test_a_request_whose_client_leaves_while_its_producer_runs_frees_its_place() -> None:
    h, server, channel = await make_harness(max_requests=10, ttl="30s")
    producer = HeldProducer()
    h.director.async_producers.append(producer)
    try:
        h.add()
        gone = await h.send(prompt="gone")
        for _ in range(500):
            if producer.entered == 1:
                break
            await asyncio.sleep(0.01)
        waiting = await h.send(prompt="waiting")
        await h.wait_queued(1)
        gone.cancel()  # the client leaves while its request is being prepared: no load, no place held
        producer.go.set()
        await routed(waiting)
        endpoint = h.datastore.get("a")
        assert endpoint is not None and endpoint.inflight_requests == 1
        await finish(waiting)
        assert endpoint.inflight_requests == 0
    finally:
        await channel.close()
        await server.stop(0)
        await h.flow_control.stop()
