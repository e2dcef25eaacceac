"""The EPP's own overload protection over a real gRPC channel: past its stream limit or while its
event loop lags, a new request is a 429 with Retry-After at its first message, as is one whose
headers reached the EPP too long after the gateway received it; requests admitted before go on,
health keeps answering, it recovers as soon as the load drops, and each refusal is counted by
reason."""

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
from epp.flowcontrol.standing_queue import StandingQueue
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from tests.unit.extproc.test_attributes import received_at
from tests.unit.flowcontrol.test_flow_control import body_msg, headers_msg, read


class Setup:
    def __init__(self, guard: OverloadGuard, channel: grpc.aio.Channel, metrics: EppMetrics) -> None:
        self.guard = guard
        self.metrics = metrics
        self.stub = ext_proc_grpc.ExternalProcessorStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    datastore = Datastore()
    datastore.synced = True
    director, _ = build_director(load_config(), datastore, PluginContext())
    metrics = EppMetrics()
    guard = OverloadGuard(max_streams=1, max_lag=0.25, max_wait=1.0, count=metrics.overload_refused)
    server = ext_proc_server(director, StreamOptions(), Health(lambda: True), guard)
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Setup(guard, channel, metrics)
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
    refused = setup.stub.Process(iter([headers_msg({})]))  # answered at dispatch: a write could come late
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
    await released(setup)
    _, kind = await first_reply(setup)
    assert kind == "request_headers"


async def test_a_lagging_event_loop_sheds_and_recovers(setup: Setup) -> None:
    setup.guard.lag = 0.3  # as measured while the loop is out of CPU
    call = setup.stub.Process(iter([headers_msg({})]))
    reply = (await read(call)).immediate_response
    assert reply.status.code == 429
    assert "its event loop lags 300 ms, over its limit of 250 ms (--max-event-loop-lag)" in str(reply.body)
    assert refusals(setup) == {"event_loop_lag": 1.0}
    setup.guard.lag = 0.01
    await released(setup)  # the limit is one stream: none may still be held
    _, kind = await first_reply(setup)
    assert kind == "request_headers"


async def released(setup: Setup) -> None:
    """Until the guard holds no stream (a refused one is let go when its call ends), at most 5 s."""
    for _ in range(500):
        if setup.guard.streams == 0:
            return
        await asyncio.sleep(0.01)


def refusals(setup: Setup) -> dict[str, float]:
    """The refusal count by reason, as scraped."""
    (family,) = (f for f in setup.metrics.registry.collect() if f.name == "llm_d_epp_overload_refused")
    return {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}


async def test_a_request_that_waited_too_long_before_the_epp_is_a_429_with_retry_after(
    setup: Setup,
) -> None:
    late = setup.stub.Process()
    message = headers_msg({})
    message.attributes["envoy.filters.http.ext_proc"].CopyFrom(received_at(time.time() - 3))
    await late.write(message)
    reply = (await read(late)).immediate_response
    assert reply.status.code == 429
    headers = {h.header.key: h.header.raw_value.decode() for h in reply.headers.set_headers}
    assert headers["retry-after"] == "1"
    text = orjson.loads(reply.body)["error"]["message"]
    assert text.startswith("inference error: ResourceExhausted - the endpoint picker is overloaded: ")
    assert text.endswith(" before it reached it, over its limit of 1000 ms (--max-queue-wait); retry later")
    assert refusals(setup) == {"queue_wait": 1.0}
    # The refused stream is no longer held: the next one (limit 1) is admitted, as is a request
    # that arrived in time or whose gateway sends no request.time.
    await released(setup)
    timely = setup.stub.Process()
    message = headers_msg({})
    message.attributes["envoy.filters.http.ext_proc"].CopyFrom(received_at(time.time() - 0.05))
    await timely.write(message)
    assert (await read(timely)).WhichOneof("response") == "request_headers"
    timely.cancel()
    await released(setup)
    _, kind = await first_reply(setup)
    assert kind == "request_headers"
    assert refusals(setup) == {"queue_wait": 1.0}


def test_the_queue_wait_is_not_checked_at_zero() -> None:
    assert OverloadGuard(max_wait=0.0).waited(3600.0) is None
    assert OverloadGuard(max_wait=1.0).waited(0.999) is None
    refusal = OverloadGuard(max_wait=1.0).waited(1.5)
    assert refusal is not None and refusal.status == 429 and refusal.retry_after == 1
    assert "waited 1500 ms before it reached it, over its limit of 1000 ms" in refusal.message


async def measured_late(guard: OverloadGuard, seconds: float) -> None:
    """Block the event loop for `seconds` (as a slow callback or a GC pause does) and return once
    the guard took its measurement: its overdue timer fires before this one, due later."""
    time.sleep(seconds)  # noqa: ASYNC251 - blocking the loop on purpose: this is the overload
    await asyncio.sleep(0.001)


async def test_one_slow_callback_does_not_shed() -> None:
    guard = OverloadGuard(max_lag=0.25)
    guard.start()
    await asyncio.sleep(0.05)  # measuring, on time
    await measured_late(guard, 0.4)
    # One late measurement: the loop already caught up when it was taken; nothing is refused.
    assert guard.admit() is None
    assert guard.refused == 0
    await guard.stop()


async def test_a_sustained_lag_sheds_and_recovers_at_the_first_measurement_under_the_limit() -> None:
    guard = OverloadGuard(max_lag=0.25)
    guard.start()
    await asyncio.sleep(0.05)
    await measured_late(guard, 0.4)
    await measured_late(guard, 0.4)  # the next measurement is late too: the loop stays behind
    assert guard.lag > 0.25
    refusal = guard.admit()
    assert refusal is not None and refusal.status == 429 and refusal.retry_after == 1
    assert "its event loop lags" in refusal.message and "(--max-event-loop-lag)" in refusal.message
    for _ in range(500):  # recovers at the next measurement
        if guard.lag < 0.25:
            break
        await asyncio.sleep(0.01)
    assert guard.lag < 0.25
    assert guard.admit() is None
    await guard.stop()


def test_below_the_bound_the_standing_queue_controller_sheds_with_one_answer() -> None:
    now = [0.0]
    counted: list[str] = []
    standing = StandingQueue(0.005, 0.1, lambda: now[0])
    guard = OverloadGuard(max_wait=1.0, count=counted.append, standing=standing)
    assert guard.checks_wait and not OverloadGuard().checks_wait
    assert guard.waited(0.0) is None
    refusals = []
    for _ in range(300):  # 300 ms of requests that each waited 20 ms: a standing queue
        now[0] += 0.001
        refusals.append(guard.waited(0.02))
    shed = [r for r in refusals if r is not None]
    assert len(shed) == 200 and all(r is shed[0] for r in shed)
    assert shed[0].status == 429 and shed[0].retry_after == 1
    assert shed[0].message == (
        "the endpoint picker is overloaded: requests have waited over 5 ms to reach it for 100 ms "
        "(--queue-wait-target, --queue-wait-interval); retry later"
    )
    # While shedding, admit() refuses new calls unread, but for one per target, read for its wait.
    assert guard.admit() is None  # a sample
    assert guard.admit() is shed[0]
    now[0] += 0.005
    assert guard.admit() is None
    assert counted.count("standing_queue") == 201
    # Past the bound the bound's own answer; a request on time ends the shedding.
    assert "over its limit of 1000 ms (--max-queue-wait)" in str(guard.waited(1.5))
    assert guard.waited(0.001) is None and guard.waited(0.02) is None
    assert counted == ["standing_queue"] * 201 + ["queue_wait"]
    assert guard.admit() is None


def test_by_priority_the_standing_queue_controller_reads_every_request_and_sheds_sheddable_ones_first() -> (
    None
):
    """With the quota by objective, while sheddable requests reach the EPP: none refused unread,
    a late request of priority 0 or more admitted, the sheddable ones shed; once none came for
    the controller's interval, every late request is shed, most unread; the bound holds for all."""
    now = [0.0]
    standing = StandingQueue(0.005, 0.1, lambda: now[0])
    guard = OverloadGuard(max_wait=1.0, standing=standing, clock=lambda: now[0])
    guard.by_priority = True
    assert guard.waited(0.0, sheddable=False) is None  # a request that found no queue
    outcomes: list[tuple[bool, bool]] = []
    for i in range(190):  # 190 ms of requests that each waited 20 ms, a sheddable one in four
        now[0] += 0.001
        sheddable = i % 4 == 0
        outcomes.append((sheddable, guard.waited(0.02, sheddable) is not None))
    assert standing.shedding
    assert not any(refused for sheddable, refused in outcomes if not sheddable)
    assert sum(refused for sheddable, refused in outcomes if sheddable) == 23  # after the interval
    for _ in range(100):
        assert guard.admit() is None  # never unread: the next request's priority is not known yet
    assert guard.waited(0.0, sheddable=False) is None  # the queue drained: sparing starts anew
    now[0] += 0.11
    assert guard.waited(0.02, sheddable=True) is None  # a new queue, not standing yet
    now[0] += 0.1
    assert guard.waited(0.02, sheddable=True) is standing.refusal
    now[0] += 0.05  # the last sheddable request is 50 ms old: others still spared ...
    assert guard.waited(0.02, sheddable=False) is None
    now[0] += 0.06  # ... and shed once the interval passed without one, most unread again
    assert guard.waited(0.02, sheddable=False) is standing.refusal
    assert [guard.admit() for _ in range(2)] == [None, standing.refusal]  # one read per target
    assert "(--max-queue-wait)" in str(guard.waited(1.5, sheddable=False))
    now[0] += 0.001
    assert guard.waited(1.5, sheddable=True) is not None


def test_by_priority_a_queue_that_shedding_the_sheddable_does_not_drain_is_shed_whole() -> None:
    """A trickle of sheddable requests beside an excess of critical ones (the reviewer's case:
    one sheddable request in 90 ms, a critical one every ms, each 500 ms late): the critical ones
    are spared one interval of the standing queue, then shed like any, until the queue drains."""
    now = [0.0]
    standing = StandingQueue(0.05, 0.1, lambda: now[0])
    guard = OverloadGuard(max_wait=1.0, standing=standing, clock=lambda: now[0])
    guard.by_priority = True
    critical: list[tuple[float, bool]] = []
    for i in range(1, 2001):  # 2 s
        now[0] = i / 1000
        if i % 90 == 0:
            guard.waited(0.5, sheddable=True)
        critical.append((now[0], guard.waited(0.5, sheddable=False) is not None))
    # standing from 0.1 s (an interval of late waits), spared for one more interval
    assert not any(refused for at, refused in critical if at < 0.2)
    assert all(refused for at, refused in critical if at >= 0.21)
    assert guard.waited(0.01, sheddable=False) is None  # drained: the episode ends
    now[0] += 0.001
    assert guard.waited(0.5, sheddable=False) is None  # a new queue is not shed before an interval


async def test_a_request_shed_under_a_standing_queue_is_a_429_with_retry_after(setup: Setup) -> None:
    now = [0.0]
    # A target well above what a message takes from this client to the server on a loaded
    # machine: with 5 ms, the call sent "on time" below was often late and shed again.
    target, interval = 0.2, 0.25
    setup.guard.standing = standing = StandingQueue(target, interval, lambda: now[0])
    standing.shed(0.0)
    standing.shed(0.3)
    now[0] = interval  # an interval of late requests
    replies = []
    for _ in range(2):
        late = setup.stub.Process()
        message = headers_msg({})
        message.attributes["envoy.filters.http.ext_proc"].CopyFrom(received_at(time.time() - 0.3))
        await late.write(message)
        replies.append((await read(late)).immediate_response)
        await released(setup)
    assert [r.status.code for r in replies] == [429, 429]
    assert replies[0] == replies[1]
    headers = {h.header.key: h.header.raw_value.decode() for h in replies[0].headers.set_headers}
    assert headers["retry-after"] == "1"
    assert orjson.loads(replies[0].body)["error"]["message"].startswith(
        "inference error: ResourceExhausted - the endpoint picker is overloaded: requests have waited over"
    )
    assert refusals(setup) == {"standing_queue": 2.0}
    # While shedding, all but one call per target are refused at dispatch, before (without) any
    # message read: this one sends none.
    unread = setup.stub.Process()
    assert (await read(unread)).immediate_response == replies[0]
    assert refusals(setup) == {"standing_queue": 3.0} and setup.guard.streams == 0
    # One target later a call is read again: on time, it is served and ends the shedding.
    now[0] += target
    timely = setup.stub.Process()
    message = headers_msg({})
    message.attributes["envoy.filters.http.ext_proc"].CopyFrom(received_at(time.time()))
    await timely.write(message)
    assert (await read(timely)).WhichOneof("response") == "request_headers"
    assert not standing.shedding
    timely.cancel()
