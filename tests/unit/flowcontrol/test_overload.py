"""The EPP's own overload protection over a real gRPC channel: past its stream limit or while its
event loop lags, a new request is a 429 with Retry-After at its first message; requests admitted
before go on, health keeps answering, and it recovers as soon as the load drops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore
from epp.extproc.pb import ext_proc_grpc
from epp.extproc.server import Health, bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.flowcontrol.overload import OverloadGuard
from epp.framework import PluginContext
from tests.unit.flowcontrol.test_flow_control import body_msg, headers_msg, read


class Setup:
    def __init__(self, guard: OverloadGuard, channel: grpc.aio.Channel) -> None:
        self.guard = guard
        self.stub = ext_proc_grpc.ExternalProcessorStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    datastore = Datastore()
    datastore.synced = True
    director, _ = build_director(load_config(), datastore, PluginContext())
    guard = OverloadGuard(max_streams=1, max_lag=0.25)
    server = ext_proc_server(director, StreamOptions(), Health(lambda: True), guard)
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Setup(guard, channel)
    await channel.close()
    await server.stop(0)
    await guard.stop()


async def first_reply(setup: Setup) -> tuple[grpc.aio.StreamStreamCall, str]:
    call = setup.stub.Process()
    await call.write(headers_msg({}))
    reply = await read(call)
    return call, reply.WhichOneof("response") or ""


async def test_past_the_stream_limit_a_new_request_is_a_429_with_retry_after(setup: Setup) -> None:
    held, kind = await first_reply(setup)
    assert kind == "request_headers" and setup.guard.streams == 1
    refused = setup.stub.Process()
    await refused.write(headers_msg({}))
    reply = (await read(refused)).immediate_response
    assert reply.status.code == 429
    headers = {h.header.key: h.header.raw_value.decode() for h in reply.headers.set_headers}
    assert headers["retry-after"] == "1"
    assert orjson.loads(reply.body)["error"]["message"] == (
        "inference error: ResourceExhausted - the endpoint picker is at its limit of 1 concurrent "
        "requests (--max-concurrent-streams); retry later"
    )
    health = await setup.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # The admitted request goes on (its body is answered: a 503 here, the pool being empty) ...
    await held.write(body_msg(orjson.dumps({"model": "m", "prompt": "hi"})))
    assert (await read(held)).immediate_response.status.code == 503
    # ... and once it ends, new requests are admitted again.
    for _ in range(500):
        if setup.guard.streams == 0:
            break
        await asyncio.sleep(0.01)
    _, kind = await first_reply(setup)
    assert kind == "request_headers"


async def test_a_lagging_event_loop_sheds_and_recovers(setup: Setup) -> None:
    setup.guard.lag = 0.3  # as measured while the loop is out of CPU
    call = setup.stub.Process()
    await call.write(headers_msg({}))
    reply = (await read(call)).immediate_response
    assert reply.status.code == 429
    assert "its event loop lags 300 ms, over its limit of 250 ms (--max-event-loop-lag)" in str(reply.body)
    setup.guard.lag = 0.01
    _, kind = await first_reply(setup)
    assert kind == "request_headers"


async def test_the_lag_is_measured() -> None:
    guard = OverloadGuard(max_lag=0.25)
    guard.start()
    await asyncio.sleep(0)
    time.sleep(0.4)  # noqa: ASYNC251 - blocking the loop on purpose: this is the overload
    for _ in range(500):
        if guard.lag > 0.25:
            break
        await asyncio.sleep(0.001)
    assert guard.lag > 0.25
    for _ in range(500):  # recovers at the next measurement
        if guard.lag < 0.25:
            break
        await asyncio.sleep(0.01)
    assert guard.lag < 0.25
    await guard.stop()
