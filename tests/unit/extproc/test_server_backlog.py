"""ext_proc streams that arrive while the EPP's event loop is saturated: gRPC core queues them
until grpc.aio accepts them, and by default drops the excess (past 1,000 queued at random, past
3,000 all), cancelling them: Envoy saw gRPC CANCELLED and answered an opaque 503 (this client
sees "Internal error from Core"). Every one of them must reach the EPP instead and get its own
answer: the overload guard's 429 with Retry-After while the lag lasts, routing once it is over."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from collections.abc import AsyncIterator
from multiprocessing.synchronize import Event

import grpc
import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore
from epp.extproc.pb import ext_proc_grpc
from epp.extproc.server import Health, bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.flowcontrol.overload import OverloadGuard
from epp.framework import PluginContext
from tests.unit.flowcontrol.test_flow_control import headers_msg

STREAMS = 3_200  # past core's default hard limit of 3,000 calls not yet accepted


def open_streams(port: int, sent: Event, answers: multiprocessing.Queue) -> None:
    answers.put(asyncio.run(_open_streams(port, sent)))


async def _open_streams(port: int, sent: Event) -> Counter[str]:
    """Opens every stream with its request headers, then says so; returns what each got first:
    `429 <message>` (an ImmediateResponse), `request_headers`, or the gRPC status name."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ext_proc_grpc.ExternalProcessorStub(channel)
        calls = [stub.Process() for _ in range(STREAMS)]
        await asyncio.gather(*(call.write(headers_msg({})) for call in calls), return_exceptions=True)
        sent.set()
        return Counter(await asyncio.gather(*(_first_answer(call) for call in calls)))


async def _first_answer(call: grpc.aio.StreamStreamCall) -> str:
    try:
        reply = await asyncio.wait_for(call.read(), timeout=60)
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name} {error.details()}"
    finally:
        call.cancel()
    if reply.HasField("immediate_response"):
        immediate = reply.immediate_response
        headers = {h.header.key: h.header.raw_value.decode() for h in immediate.headers.set_headers}
        message = orjson.loads(immediate.body)["error"]["message"]
        retry = "retry-after" in headers
        return f"{immediate.status.code} retry-after={retry} {message.split(': its event loop lags')[0]}"
    return reply.WhichOneof("response") or ""


@pytest.fixture
async def port() -> AsyncIterator[int]:
    datastore = Datastore()
    datastore.synced = True
    director, _ = build_director(load_config(), datastore, PluginContext())
    guard = OverloadGuard(max_lag=0.25)
    server = ext_proc_server(director, StreamOptions(), Health(lambda: True), guard)
    bound = bind(server, "127.0.0.1:0", None)
    await server.start()
    guard.start()
    yield bound
    await server.stop(0)
    await guard.stop()


async def test_streams_queued_behind_a_saturated_loop_all_get_the_guards_429(port: int) -> None:
    spawn = multiprocessing.get_context("spawn")  # a fresh process: no copy of this one's gRPC state
    sent = spawn.Event()
    answers: multiprocessing.Queue = spawn.Queue()
    client = spawn.Process(target=open_streams, args=(port, sent, answers))
    client.start()
    # The saturated loop: it runs nothing while the streams arrive and queue in gRPC core, and
    # stays saturated past the guard's next measurement (one late measurement alone does not shed).
    assert sent.wait(timeout=120)  # blocking the loop is the point
    await asyncio.sleep(0.001)  # the guard's overdue measurement runs
    time.sleep(0.5)  # noqa: ASYNC251 - the last writes reach the server meanwhile
    got = await asyncio.to_thread(answers.get, timeout=120)
    client.join()
    shed = "429 retry-after=True inference error: ResourceExhausted - the endpoint picker is overloaded"
    # Each one answered by the EPP: shed while the lag lasted, admitted once it recovered.
    assert set(got) <= {shed, "request_headers"}, got
    assert got[shed] > 0 and got.total() == STREAMS, got
