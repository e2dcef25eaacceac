"""Two replicas through a real redis-server: routes and load shared; Redis gone and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio.connection import Connection

from epp.datastore import Datastore, EndpointSpec
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.plugins.inflight_load_producer import InFlightLoadProducer
from epp.replicas import ReplicaState
from epp.replicas.local_redis import LocalRedis, free_port
from epp.replicas.redis_sync import RedisReplicaSync, _later
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import plugin, request

PROMPT = "y" * 4096


class Replica:
    def __init__(self, name: str, url: str) -> None:
        self.store = Datastore()
        self.store.replace_all(
            EndpointSpec(name=f"e{i}", address=f"10.0.0.{i + 1}", port=8000) for i in range(2)
        )
        self.producer = plugin(ApproxPrefixCacheProducer)
        self.load = plugin(InFlightLoadProducer)
        self.state = ReplicaState(name, self.store, [self.producer, self.load])
        self.registry = CollectorRegistry()
        self.sync = RedisReplicaSync(url, self.state, "epp:test", self.registry, interval=0.02, ttl=0.4)

    def route(self, prompt: str, endpoint: str) -> None:
        req = request(prompt)
        self.producer.prepare(req, self.store.endpoints())
        target = self.store.get(endpoint)
        assert target is not None
        self.producer.pre_request(req, SchedulingResult({"default": ProfileResult([target])}, "default"))

    def matched(self, prompt: str) -> dict[str, int]:
        req = request(prompt)
        self.producer.prepare(req, self.store.endpoints())
        return {
            e.name: n for e, n in self.producer.index.match(req.attributes[self.producer.name].hashes).items()
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def running(*replicas: Replica) -> AsyncIterator[None]:
    for replica in replicas:
        await replica.sync.start()
    try:
        yield
    finally:
        for replica in replicas:
            await replica.sync.stop()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_two_replicas_share_routes_and_load(redis_server: LocalRedis) -> None:
    a, b = Replica("a", redis_server.url), Replica("b", redis_server.url)
    await a.sync.start()
    await b.sync.start()
    try:
        await until(lambda: a.sync.connected and b.sync.connected and b.sync.subscribed)
        await until(
            lambda: a.metric("epp_replica_sync_peers") == 1 and b.metric("epp_replica_sync_peers") == 1
        )
        a.route(PROMPT, "e1")
        assert a.matched(PROMPT) == {"e1": 64}  # 4096 bytes in 64-byte blocks
        await until(lambda: b.matched(PROMPT) == {"e1": 64})
        assert a.metric("epp_replica_sync_routes_total", direction="sent") == 1
        assert b.metric("epp_replica_sync_routes_total", direction="received") == 1
        a_e0 = a.store.get("e0")
        b_e0 = b.store.get("e0")
        assert a_e0 is not None and b_e0 is not None
        a_e0.inflight_requests += 3  # as the director charges routed requests
        a_e0.inflight_tokens += 300
        await until(lambda: (b_e0.inflight_requests, b_e0.inflight_tokens) == (3, 300))
        a_e0.inflight_requests -= 3
        a_e0.inflight_tokens -= 300
        await until(lambda: (b_e0.inflight_requests, b_e0.inflight_tokens) == (0, 0))
        # the inflight-load-producer's counts too (llm-d's cross-replica state)
        routed = request("z" * 80)
        result = SchedulingResult({"default": ProfileResult([a_e0])}, "default")
        a.load.pre_request(routed, result)
        await until(lambda: (b.load.load.requests(b_e0), b.load.load.tokens(b_e0)) == (1, 20))
        a.load.response_complete(routed, result, None)
        await until(lambda: (b.load.load.requests(b_e0), b.load.load.tokens(b_e0)) == (0, 0))
        # a replica that stops (or dies: its key's TTL) stops counting
        a_e0.inflight_requests += 2
        a.load.pre_request(request("z" * 80), result)
        await until(lambda: b_e0.inflight_requests == 2 and b.load.load.requests(b_e0) == 1)
        await a.sync.stop()
        await until(lambda: b_e0.inflight_requests == 0 and b.load.load.requests(b_e0) == 0)
        assert a_e0.inflight_requests == 2  # its own count untouched
        assert a.load.load.requests(a_e0) == 1
    finally:
        await a.sync.stop()
        await b.sync.stop()


async def test_redis_down_then_back_degrades_to_local_state_and_recovers() -> None:
    port = free_port()
    a, b = Replica("a", f"redis://127.0.0.1:{port}/0"), Replica("b", f"redis://127.0.0.1:{port}/0")
    await a.sync.start()  # no Redis yet: start returns, the replica routes alone
    await b.sync.start()
    try:
        await until(lambda: a.metric("epp_replica_sync_errors_total", operation="load") > 0)
        assert not a.sync.connected
        a.route(PROMPT, "e0")  # routing goes on with local state
        assert a.matched(PROMPT) == {"e0": 64}
        async with LocalRedis(port=port):
            await until(lambda: a.sync.connected and b.sync.connected)
            b_e1 = b.store.get("e1")
            a_e1 = a.store.get("e1")
            assert a_e1 is not None and b_e1 is not None
            a_e1.inflight_requests += 1
            await until(lambda: b_e1.inflight_requests == 1)
            await until(lambda: b.sync.subscribed)  # resubscribed after the outage: routes flow again
            await until(lambda: _routes_flow(a, b))
        await until(lambda: not b.sync.connected)  # Redis killed: peers' load dropped
        assert b_e1.inflight_requests == 0
        assert b.metric("epp_replica_sync_connected") == 0
    finally:
        await a.sync.stop()
        await b.sync.stop()


def _routes_flow(a: Replica, b: Replica) -> bool:
    prompt = "z" * 4096
    if b.matched(prompt).get("e1"):
        return True
    a.route(prompt, "e1")
    return False


async def test_routes_made_while_redis_was_down_reach_the_peers_when_it_returns() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    a, b = Replica("a", url), Replica("b", url)
    await a.sync.start()
    try:
        a.route(PROMPT, "e1")  # no Redis: kept in the outbox
        await until(lambda: a.metric("epp_replica_sync_errors_total", operation="publish") > 0)
        assert a.metric("epp_replica_sync_routes_total", direction="sent") == 0
        async with LocalRedis(port=port):
            await until(lambda: a.metric("epp_replica_sync_routes_total", direction="sent") == 1)
            await b.sync.start()  # b starts after the route was appended: it reads the recent past
            await until(lambda: b.matched(PROMPT) == {"e1": 64})
        assert a.metric("epp_replica_sync_routes_total", direction="dropped") == 0
    finally:
        await a.sync.stop()
        await b.sync.stop()


async def test_a_reader_cut_off_catches_up_on_the_routes_it_missed(redis_server: LocalRedis) -> None:
    a, b = Replica("a", redis_server.url), Replica("b", redis_server.url)
    async with running(a, b):
        await until(lambda: a.sync.connected and b.sync.subscribed)
        a.route("w" * 4096, "e1")
        await until(lambda: b.metric("epp_replica_sync_routes_total", direction="received") == 1)
        await b.sync.stop()  # b away (its connection gone) while a routes
        a.route(PROMPT, "e0")
        await until(lambda: a.metric("epp_replica_sync_routes_total", direction="sent") == 2)
        assert b.matched(PROMPT) == {}
        await b.sync.start()
        await until(lambda: b.matched(PROMPT) == {"e0": 64})
        await until(lambda: b.sync.subscribed)
        # resumed after the last entry it had read: the first route is not learned twice
        assert b.metric("epp_replica_sync_routes_total", direction="received") == 2


async def test_a_foreign_entry_in_the_routes_stream_is_skipped_and_counted(redis_server: LocalRedis) -> None:
    a, b = Replica("a", redis_server.url), Replica("b", redis_server.url)
    async with running(a, b):
        await until(lambda: a.sync.connected and b.sync.subscribed)
        assert a.sync._client is not None
        await a.sync._client.xadd("epp:test:routes", {"other": b"x"})
        await a.sync._client.xadd("epp:test:routes", {"r": b"\x05\x00ab"})
        a.route(PROMPT, "e1")  # routes after the bad entries still flow
        await until(lambda: b.matched(PROMPT) == {"e1": 64})
        assert b.metric("epp_replica_sync_errors_total", operation="decode") == 2
        assert b.sync.connected


def test_reading_resumes_from_the_later_of_the_last_entry_read_and_the_replay_horizon() -> None:
    assert _later(None, "1000-0") == "1000-0"  # first start: the horizon
    assert _later(b"2000-3", "1000-0") == "2000-3"  # a short gap: where reading stopped
    assert _later(b"999-7", "1000-0") == "1000-0"  # a long outage: nothing older than the horizon
    assert _later("1000-1", "1000-0") == "1000-1"


async def test_stop_ends_a_task_whose_cancellation_a_finishing_send_swallowed(
    redis_server: LocalRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py sends a command under `asyncio.wait_for`; on Python 3.11 a cancellation that
    arrives as the send completes is lost (wait_for returns the send's result). Stop is timed
    into that window here, as a loaded host timed it by chance: the routes reader went on
    reading for STOP_TIMEOUT, then failed on the closed client."""
    a = Replica("a", redis_server.url)
    await a.sync.start()
    try:
        await until(lambda: a.sync.subscribed)
        stopping: list[asyncio.Task[None]] = []
        send = Connection._send_packed_command

        async def send_then_stop(self: Connection, command: Iterable[bytes]) -> None:
            await send(self, command)
            if not stopping and any(b"XREAD" in part for part in command):
                stopping.append(asyncio.get_running_loop().create_task(a.sync.stop()))

        monkeypatch.setattr(Connection, "_send_packed_command", send_then_stop)
        tasks = list(a.sync._tasks)
        await until(lambda: bool(stopping))
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="epp.replicas.redis_sync"):
            await stopping[0]
        assert [t.get_name() for t in tasks if not t.done()] == []
        assert time.monotonic() - started < 1.0
        assert "still running" not in caplog.text
        assert "failed" not in caplog.text
    finally:
        await a.sync.stop()
