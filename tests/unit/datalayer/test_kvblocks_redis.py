"""The Redis backend of the precise prefix index, against a real redis-server: indexes sharing one
Redis answer what the in-memory index answers for the same events, whichever of them applied the
events; a pod's removal retires its entries; Redis going away and coming back; bad data."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterable

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis
from redis.asyncio.connection import Connection

from epp.datalayer import kvblocks_redis
from epp.datalayer.kvblocks import KVBlockIndex, KVIndexMetrics, TokenProcessor
from epp.datalayer.kvblocks_redis import RETRY_INTERVAL, RedisIndexMetrics, RedisKVBlockIndex
from epp.datalayer.kvsubscriber import KVEventIngester
from epp.datalayer.redis_address import redis_url
from epp.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
    encode_batch,
    prompt_block_hashes,
)
from epp.replicas.local_redis import LocalRedis

BLOCK = 16


def redis_index(url: str, **kw: object) -> RedisKVBlockIndex:
    return RedisKVBlockIndex(
        TokenProcessor(BLOCK),
        url,
        metrics=KVIndexMetrics(CollectorRegistry()),
        redis_metrics=RedisIndexMetrics(CollectorRegistry()),
        **kw,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture
async def pair(redis_server: LocalRedis) -> AsyncIterator[tuple[RedisKVBlockIndex, RedisKVBlockIndex]]:
    """Two replicas' indexes sharing one Redis."""
    a, b = redis_index(redis_server.url), redis_index(redis_server.url)
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


def stored(tokens: list[int], medium: str | None = None) -> BlockStored:
    return BlockStored(prompt_block_hashes(tokens, BLOCK, "e"), None, tokens, None, medium=medium)


def workload(seed: int) -> tuple[list[tuple[str, list[KVEvent]]], list[list[int]]]:
    """Pods storing prompts on shared prefixes (GPU or CPU), removing some blocks, one clearing
    everything; and the prompts to look up."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(50_000) for _ in range(64)] for _ in range(3)]
    prompts = [
        p + [rng.randrange(50_000) for _ in range(rng.choice((16, 48)))] for p in prefixes for _ in (0, 1)
    ]
    steps: list[tuple[str, list[KVEvent]]] = []
    for n in range(40):
        pod = f"10.0.0.{rng.randrange(5)}:8000"
        prompt = rng.choice(prompts)
        cut = rng.randrange(1, len(prompt) // BLOCK + 1) * BLOCK
        events: list[KVEvent] = [stored(prompt[:cut], rng.choice((None, "cpu")))]
        if n % 7 == 3:
            hashes = prompt_block_hashes(prompt[:cut], BLOCK, "e")
            events.append(BlockRemoved(hashes[rng.randrange(len(hashes)) :]))
        if n == 25:
            events = [AllBlocksCleared()]
        steps.append((pod, events))
    return steps, prompts


async def test_replicas_sharing_redis_answer_as_the_in_memory_index(
    pair: tuple[RedisKVBlockIndex, RedisKVBlockIndex],
) -> None:
    a, b = pair
    memory = KVBlockIndex(TokenProcessor(BLOCK))
    steps, prompts = workload(7)
    for pod, events in steps:
        memory.apply(pod, "m", events)
        a.apply(pod, "m", events)  # only replica a receives the events
    await a.flushed()
    pods = set(memory.pods()) | {pod for pod, _ in steps}
    seen_hits = 0
    for prompt in prompts:
        keys = memory.keys_for(prompt, "m")
        expected = memory.longest_prefix(keys, pods)
        assert await b.lookup(keys) == pytest.approx(expected)
        assert await a.lookup(keys) == pytest.approx(expected)
        seen_hits += bool(expected)
    assert seen_hits >= 3  # the comparison is not between empty answers


async def test_pod_removal_on_any_replica_retires_the_pods_entries(
    pair: tuple[RedisKVBlockIndex, RedisKVBlockIndex],
) -> None:
    a, b = pair
    tokens = list(range(80))
    a.apply("p1", "m", [stored(tokens)])
    a.apply("p2", "m", [stored(tokens[:32])])
    await a.flushed()
    keys = a.keys_for(tokens, "m")
    assert await b.lookup(keys) == {"p1": 5.0, "p2": 2.0}
    b.clear_pod("p1")  # b never saw p1's events: the pod left the pool
    await b.flushed()
    assert await a.lookup(keys) == {"p2": 2.0}
    # p1 back in the pool: its new stores count, its old entries stay retired
    a.apply("p1", "m", [AllBlocksCleared(), stored(tokens[:16])])
    await a.flushed()
    assert await b.lookup(keys) == {"p1": 1.0, "p2": 2.0}


async def test_a_gap_one_replica_saw_keeps_the_shared_entries_a_publisher_restart_retires_them(
    pair: tuple[RedisKVBlockIndex, RedisKVBlockIndex],
) -> None:
    """Each replica receives the pod's events: one replica's lost messages say nothing of what
    the others applied; an engine that restarted lost its cache for every replica."""
    a, b = pair
    tokens, other = list(range(48)), list(range(100, 132))
    keys = a.keys_for(tokens, "m")
    ingesters = [KVEventIngester(index, index.metrics) for index in pair if index.metrics is not None]

    def send(ingester: KVEventIngester, seq: int, prompt: list[int]) -> None:
        ingester.frames([b"kv@p1@m", seq.to_bytes(8, "big"), encode_batch([stored(prompt)], 0.0, BLOCK, {})])

    send(ingesters[1], 0, tokens)
    send(ingesters[1], 1, other)
    await b.flushed()
    send(ingesters[0], 0, tokens)
    send(ingesters[0], 2, other)  # a lost message 1
    await a.flushed()
    assert await a.lookup(keys) == {"p1": 3.0}
    assert a.metrics is not None and a.metrics.resyncs.labels("gap")._value.get() == 1
    send(ingesters[0], 0, other)  # the engine restarted
    await a.flushed()
    assert await b.lookup(keys) == {}
    assert await b.lookup(b.keys_for(other, "m")) == {"p1": 2.0}


async def test_bounded_holders_and_ttl_refreshed_by_matches(redis_server: LocalRedis) -> None:
    index = redis_index(redis_server.url, pod_cache_size=2, ttl=60.0)
    await index.start()
    try:
        tokens = list(range(32))
        for pod in ("p1", "p2", "p3"):
            index.apply(pod, "m", [stored(tokens)])
        await index.flushed()
        keys = index.keys_for(tokens, "m")
        assert await index.lookup(keys) == {"p2": 2.0, "p3": 2.0}  # the oldest holder went
        client = aioredis.from_url(redis_server.url)
        name = f"{index.key_prefix}{keys[0]}"
        assert 55_000 < await client.pttl(name) <= 60_000  # set when the key was created
        await client.pexpire(name, 1000)
        await index.lookup(keys)
        assert 55_000 < await client.pttl(name) <= 60_000  # a match refreshed it
        await client.aclose()
    finally:
        await index.stop()


async def test_generations_live_as_long_as_the_block_keys_and_never_come_back(
    redis_server: LocalRedis,
) -> None:
    index = redis_index(redis_server.url, ttl=60.0)
    await index.start()
    client = aioredis.from_url(redis_server.url)
    try:
        tokens = list(range(80))
        index.apply("p1", "m", [stored(tokens)])
        await index.flushed()
        keys = index.keys_for(tokens, "m")
        generation = f"{index.key_prefix}generation:p1"
        assert 55_000 < await client.pttl(generation) <= 60_000  # set by the pod's write
        await client.pexpire(generation, 1000)
        assert await index.lookup(keys) == {"p1": 5.0}
        assert 55_000 < await client.pttl(generation) <= 60_000  # a lookup its run matched renewed it
        await client.delete(generation)  # as its expiry (or an eviction) would
        assert await index.lookup(keys) == {}
        index.apply("p1", "m", [stored(tokens[:16], "cpu")])  # a new write: a new generation
        await index.flushed()
        assert await index.lookup(keys) == {"p1": 0.8}  # the entries of the old one stay retired
    finally:
        await client.aclose()
        await index.stop()


async def test_speculative_holders_extend_what_redis_holds(
    pair: tuple[RedisKVBlockIndex, RedisKVBlockIndex],
) -> None:
    a, b = pair
    tokens = list(range(64))
    a.apply("p1", "m", [stored(tokens[:16])])
    await a.flushed()
    keys = b.keys_for(tokens, "m")
    b.add_speculative(keys, "p2", now=0.0, ttl=5.0)
    b.add_speculative(keys, "p1", now=0.0, ttl=5.0)
    assert await b.lookup(keys) == {"p1": 4.0, "p2": 4.0}
    assert await a.lookup(keys) == {"p1": 1.0}  # speculation stays with the replica that routed


async def test_redis_down_then_back(caplog: pytest.LogCaptureFixture, redis_server: LocalRedis) -> None:
    index = redis_index(redis_server.url)
    await index.start()
    tokens = list(range(48))
    keys = index.keys_for(tokens, "m")
    caplog.set_level(logging.WARNING, "epp.datalayer.kvblocks_redis")
    try:
        await redis_server.stop()
        assert await index.lookup(keys) is None
        assert await index.lookup(keys) is None  # not tried again at once
        metrics = index.redis_metrics
        assert metrics.errors.labels("lookup")._value.get() == 1
        assert metrics.skipped._value.get() == 1 and metrics.up._value.get() == 0
        index.apply("p1", "m", [stored(tokens)])  # written once Redis answers
        assert index.pending_writes + index._in_flight == 3
        await redis_server.start()
        await index.flushed(timeout=RETRY_INTERVAL * 5)
        assert await index.lookup(keys) == {"p1": 3.0}
        assert metrics.up._value.get() == 1
        messages = [r.getMessage() for r in caplog.records]
        assert sum("does not answer" in m for m in messages) == 1  # the outage, logged once
        assert sum("answers again" in m for m in messages) == 1
    finally:
        await index.stop()


async def test_a_full_redis_refuses_writes_which_are_dropped_not_retried(
    pair: tuple[RedisKVBlockIndex, RedisKVBlockIndex], redis_server: LocalRedis
) -> None:
    a, b = pair
    client = aioredis.from_url(redis_server.url)
    tokens = list(range(48))
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", 1)  # full: writes refused with OOM
        a.apply("p1", "m", [stored(tokens)])
        await a.flushed()  # dropped, not queued forever
        assert a.redis_metrics.errors.labels("write")._value.get() == 1
        assert a.redis_metrics.dropped._value.get() == 3
        assert a.redis_metrics.up._value.get() == 1  # Redis answers: not an outage
        await client.config_set("maxmemory", 0)
        a.apply("p2", "m", [stored(tokens)])
        await a.flushed()
        assert await b.lookup(b.keys_for(tokens, "m")) == {"p2": 3.0}
    finally:
        await client.aclose()


async def test_a_lookup_after_stop_finds_nothing_and_is_counted(redis_server: LocalRedis) -> None:
    """Requests still in flight at shutdown go on without the index."""
    index = redis_index(redis_server.url)
    await index.start()
    tokens = list(range(48))
    index.apply("p1", "m", [stored(tokens)])
    await index.stop()  # sends what is queued first
    assert await index.lookup(index.keys_for(tokens, "m")) is None
    assert index.redis_metrics.skipped._value.get() == 1
    await index.start()
    assert await index.lookup(index.keys_for(tokens, "m")) == {"p1": 3.0}
    await index.stop()


async def test_redis_unreachable_from_the_start(caplog: pytest.LogCaptureFixture) -> None:
    index = redis_index("redis://127.0.0.1:9/0", lookup_timeout=0.2)
    await index.start()  # does not raise: the EPP starts and scores without the index
    try:
        assert await index.lookup(index.keys_for(list(range(32)), "m")) is None
        assert index.redis_metrics.errors.labels("connect")._value.get() == 1
    finally:
        await index.stop()


async def test_foreign_or_malformed_data_under_the_prefix_is_ignored_or_replaced(
    pair: tuple[RedisKVBlockIndex, RedisKVBlockIndex],
    redis_server: LocalRedis,
) -> None:
    a, b = pair
    tokens = list(range(48))
    keys = a.keys_for(tokens, "m")
    client = aioredis.from_url(redis_server.url)
    try:
        await client.set(f"{a.key_prefix}{keys[0]}", "not a hash")
        await client.hset(f"{a.key_prefix}{keys[1]}", mapping={"p9": "garbage", "p8": "g1:x"})
        assert await b.lookup(keys) == {}  # the chain breaks at the foreign key
        a.apply("p1", "m", [stored(tokens)])
        await a.flushed()
        assert await b.lookup(keys) == {"p1": 3.0}
        await client.set(f"{a.key_prefix}generation:p9", "g99")
        await client.hset(f"{a.key_prefix}{keys[0]}", "p9", "g99:1.0")  # p9's run: one block
        assert await b.lookup(keys) == {"p1": 3.0, "p9": 1.0}
        # p9's malformed holder, met on its run, is deleted; p8's, never reached, is only ignored
        assert set(await client.hkeys(f"{a.key_prefix}{keys[1]}")) == {b"p1", b"p8"}
    finally:
        await client.aclose()


async def test_malformed_messages_are_counted_and_the_shared_index_keeps_the_rest(
    pair: tuple[RedisKVBlockIndex, RedisKVBlockIndex],
) -> None:
    a, b = pair
    metrics = a.metrics
    assert metrics is not None
    ingester = KVEventIngester(a, metrics, {"p1"}.__contains__)
    tokens = list(range(32))
    batch = encode_batch([stored(tokens)], 0.0, BLOCK, {})
    ingester.frames([b"kv@p1@m"])  # one frame, not three
    ingester.frames([b"kv@p1@m", (0).to_bytes(8, "big"), b"\xc1 not msgpack"])
    ingester.frames([b"kv@p9@m", (0).to_bytes(8, "big"), batch])  # not a pool member
    ingester.frames([b"kv@p1@m", (1).to_bytes(8, "big"), batch])
    await a.flushed()
    dropped = {
        s.labels["reason"]: s.value for s in metrics.dropped.collect()[0].samples if s.name.endswith("_total")
    }
    assert dropped == {"malformed_frames": 1.0, "malformed_message": 1.0, "unknown_pod": 1.0}
    assert await b.lookup(b.keys_for(tokens, "m")) == {"p1": 2.0}
    a.apply("bad pod", "m", [stored(tokens)])  # not an endpoint name: kept out of the shared index
    await a.flushed()
    assert await b.lookup(b.keys_for(tokens, "m")) == {"p1": 2.0}


def test_addresses_as_llm_d_reads_them() -> None:
    assert redis_url("redis-svc:6379") == "redis://redis-svc:6379"
    assert redis_url("valkey://v:6379") == "redis://v:6379"
    assert redis_url("valkeys://v:6380") == "rediss://v:6380"
    assert redis_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    with pytest.raises(ValueError, match="unsupported scheme 'http'"):
        redis_url("http://r:6379")


async def test_stop_ends_a_flusher_whose_cancellation_a_finishing_send_swallowed(
    redis_server: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py sends a command under `asyncio.wait_for`; on Python 3.11 a cancellation that
    arrives as the send completes is lost. A stop that gave up waiting for the queue (Redis slow)
    cancelled the flusher in that window here: it went back to waiting for work, and stop()
    waited for it for ever."""
    index = redis_index(redis_server.url)
    await index.start()
    monkeypatch.setattr(kvblocks_redis, "STOP_TIMEOUT", 0.0)  # stop at once, the write in flight
    stopping: list[asyncio.Task[None]] = []
    sent = asyncio.Event()
    send = Connection._send_packed_command

    async def send_then_stop(self: Connection, command: Iterable[bytes]) -> None:
        await send(self, command)
        if not stopping and any(b"EVAL" in part for part in command):
            stopping.append(asyncio.get_running_loop().create_task(index.stop()))
            sent.set()

    monkeypatch.setattr(Connection, "_send_packed_command", send_then_stop)
    index.apply("p1", "m", [stored(list(range(80)))])
    async with asyncio.timeout(5):
        await sent.wait()
    done, _ = await asyncio.wait(stopping, timeout=2)
    assert done == set(stopping)
