"""`RedisReplicaSync`: a replica's shared state through Redis, the engine operators already run
for this (Kthena and AIBrix keep router state there).

- Routes: every routed request's prefix blocks are appended to the Redis stream `<ns>:routes`
  (batched, pipelined, one entry per route, the stream capped at `ROUTES_KEPT` entries); every
  replica reads the stream from where it left off. A stream rather than pub/sub, so nothing is lost
  to a gap: a replica that starts learns its peers' routes of the last `REPLAY_AGE` seconds, one
  whose connection dropped catches up on what the peers routed meanwhile, and the routes a replica
  made while Redis was unreachable are kept (bounded) and appended when it answers again.
- In-flight load: every `interval` each replica writes its own per-endpoint counts to
  `<ns>:load:<replica>` with a TTL of `ttl`, registers in the set `<ns>:replicas`, reads every
  registered replica's key and adds the others' sum to its endpoints (a dead replica's key expires,
  so its load disappears within `ttl`; the set is pruned of expired keys).

Redis unreachable, or lost later: the replica keeps routing on its local state (its own index and
load), counts the failure in `epp_replica_sync_errors_total`, logs the outage once and its end,
and retries every `interval`. Nothing here blocks the event loop (redis-py's asyncio client)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from epp.metrics.families import Families
from epp.replicas.state import EndpointLoad, ReplicaLoad, ReplicaState, RouteMessage
from epp.tasks import cancel_until_done

log = logging.getLogger(__name__)

MAX_OUTBOX = 10_000  # routes waiting for Redis; beyond this (Redis slow or gone) the oldest drop
BATCH = 256  # routes per pipelined round trip
ROUTES_KEPT = 10_000  # entries the routes stream keeps (approximately): how far a reader can lag
STOP_TIMEOUT = 2.0  # seconds each step of stop() may take
REPLAY_AGE = 30.0  # seconds: older routes are neither appended late nor learned on catching up


class ReplicaSyncMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        f = Families(registry, prefix="epp_replica_sync_", alpha=False)
        self.errors = f.counter(
            "errors_total",
            "Redis operations of the replica sync that failed (the replica routes on local state)",
            ["operation"],
        )
        self.routes = f.counter(
            "routes_total",
            "prefix routes shared with other replicas: sent, received, dropped (outbox full or too old)",
            ["direction"],
        )
        self.connected = f.gauge("connected", "1 while Redis answers, 0 while on local state")
        self.peers = f.gauge("peers", "other replicas whose load is counted")


class RedisReplicaSync:
    def __init__(
        self,
        url: str,
        state: ReplicaState,
        namespace: str,
        registry: CollectorRegistry | None = None,
        interval: float = 0.1,
        ttl: float = 2.0,
    ) -> None:
        self.url = url
        self.state = state
        self.namespace = namespace
        self.interval = interval
        self.ttl = ttl
        self.metrics = ReplicaSyncMetrics(registry)
        self.connected = False
        self.subscribed = False  # reading the routes stream, right now
        self._outage_logged = False
        self._client: aioredis.Redis | None = None
        self._outbox: deque[tuple[float, RouteMessage]] = deque()  # (when routed, route)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stream = f"{namespace}:routes"
        self._read_from: str | bytes | None = None  # the last stream entry read; None before the first
        self._socket_timeout = max(interval * 5, 0.5)
        self._members = f"{namespace}:replicas"
        self._own_key = self._load_key(state.replica_id)

    def _load_key(self, replica: str) -> str:
        return f"{self.namespace}:load:{replica}"

    def _plugin_load_key(self, replica: str) -> str:
        """The load-sharing plugins' counts, apart from the director's (an older replica reads
        only those)."""
        return f"{self._load_key(replica)}:plugins"

    async def start(self) -> None:
        """Starts the background tasks and returns at once, Redis reachable or not."""
        self._client = aioredis.from_url(
            self.url, socket_timeout=self._socket_timeout, socket_connect_timeout=1.0
        )
        self.state.on_route = self._enqueue
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._publish_routes(), name="replica-sync-publish"),
            loop.create_task(self._read_routes(), name="replica-sync-read"),
            loop.create_task(self._exchange_load(), name="replica-sync-load"),
        ]

    async def stop(self) -> None:
        """Stops the tasks and leaves the peers, each step bounded: a Redis that hangs (or a
        client left mid-command by the cancellation) never holds up the EPP's shutdown."""
        self.state.on_route = None
        for task in self._tasks:
            cancel_until_done(task)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
            if pending:
                log.warning(
                    "replica sync: %d task(s) still running %.0f s after stop", len(pending), STOP_TIMEOUT
                )
        self._tasks = []
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await client.delete(self._own_key, self._plugin_load_key(self.state.replica_id))
                    await client.srem(self._members, self.state.replica_id)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await client.aclose()
        self.state.apply_peer_load(())

    def _enqueue(self, message: RouteMessage) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self._outbox.popleft()
            self.metrics.routes.labels("dropped").inc()
        self._outbox.append((time.monotonic(), message))
        self._wake.set()

    # ----- health ----------------------------------------------------------------------------

    def _failed(self, operation: str, error: BaseException) -> None:
        self.metrics.errors.labels(operation).inc()
        if self.connected or not self._outage_logged:
            log.warning(
                "replica sync: Redis at %s failed (%s: %s); routing on this replica's local state",
                self.url,
                operation,
                error,
            )
            self._outage_logged = True
        self.connected = False
        self.metrics.connected.set(0)
        self.metrics.peers.set(0)
        self.state.apply_peer_load(())  # peers' load is unknown now: count only our own

    def _succeeded(self) -> None:
        if not self.connected:
            if self._outage_logged:
                log.info("replica sync: Redis at %s answers again", self.url)
            self._outage_logged = False
            self.connected = True
            self.metrics.connected.set(1)

    # ----- routes ----------------------------------------------------------------------------

    async def _publish_routes(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                self._drop_stale()
                batch = [self._outbox.popleft() for _ in range(min(BATCH, len(self._outbox)))]
                try:
                    await self._append([message for _, message in batch])
                except (RedisError, OSError) as error:
                    self._failed("publish", error)
                    self._requeue(batch)  # appended once Redis answers
                    await asyncio.sleep(self.interval)
                    continue
                self.metrics.routes.labels("sent").inc(len(batch))

    def _requeue(self, batch: list[tuple[float, RouteMessage]]) -> None:
        """Puts a batch that failed back in front of the routes made since, the oldest dropping
        first if that overfills the outbox."""
        self._outbox.extendleft(reversed(batch))
        while len(self._outbox) > MAX_OUTBOX:
            self._outbox.popleft()
            self.metrics.routes.labels("dropped").inc()

    def _drop_stale(self) -> None:
        oldest = time.monotonic() - REPLAY_AGE
        while self._outbox and self._outbox[0][0] < oldest:
            self._outbox.popleft()
            self.metrics.routes.labels("dropped").inc()

    async def _append(self, batch: list[RouteMessage]) -> None:
        assert self._client is not None
        async with self._client.pipeline(transaction=False) as pipe:
            for message in batch:
                pipe.xadd(self._stream, {"r": message.encode()}, maxlen=ROUTES_KEPT, approximate=True)
            await pipe.execute()

    async def _read_routes(self) -> None:
        client = self._client
        assert client is not None
        received = self.metrics.routes.labels("received")
        block_ms = int(self._socket_timeout * 500)  # well inside the socket timeout
        while True:
            try:
                # From where reading stopped, but never from before REPLAY_AGE: after a long
                # outage the routes missed are too old to steer by.
                self._read_from = _later(self._read_from, await self._replay_start())
                self.subscribed = True
                while True:
                    started = time.monotonic()
                    try:
                        answer: Any = await client.xread(
                            {self._stream: self._read_from}, count=BATCH, block=block_ms
                        )
                    except RedisTimeout:
                        if self._stalled_since(started):
                            continue  # read again (on a new connection) from where reading stopped
                        raise
                    for _, entries in answer or ():
                        for entry_id, fields in entries:
                            self._read_from = entry_id
                            if self._learn(fields):
                                received.inc()
            except (RedisError, OSError) as error:
                self._failed("read", error)
            finally:
                self.subscribed = False
            await asyncio.sleep(self.interval)  # back off, then resume where reading stopped

    def _stalled_since(self, started: float) -> bool:
        """Whether a read begun at `started` that timed out was held by this process, not by
        Redis: a Redis that does not answer times out one socket timeout after the read began,
        but a replica stopped (SIGSTOP, a debugger, a host that did not schedule it) for longer
        finds its read's timeout past due when it runs again, the answer maybe waiting in the
        socket. Blamed on Redis, every such stall logged "replica sync: Redis ... failed" and
        dropped the peers' load until the next exchange, as 8911b6d found for the scraper."""
        return time.monotonic() - started > 2 * self._socket_timeout

    def _learn(self, fields: dict[bytes, bytes]) -> bool:
        try:
            route = RouteMessage.decode(fields[b"r"])
        except (KeyError, ValueError):  # not written by a replica: skipped, counted
            self.metrics.errors.labels("decode").inc()
            return False
        return self.state.apply_route(route)

    async def _replay_start(self) -> str:
        """The stream id of `REPLAY_AGE` seconds ago by Redis's clock: a starting replica learns
        its peers' recent routes, not ones so old their blocks are likely evicted."""
        assert self._client is not None
        seconds, micros = await self._client.time()
        return f"{max(0, int((seconds + micros / 1e6 - REPLAY_AGE) * 1000))}-0"

    # ----- in-flight load --------------------------------------------------------------------

    async def _exchange_load(self) -> None:
        while True:
            try:
                await self.exchange_load_once()
            except (RedisError, OSError, ValueError) as error:
                self._failed("load", error)
            await asyncio.sleep(self.interval)

    async def exchange_load_once(self) -> None:
        """Publish this replica's load, read every other replica's, apply their sum."""
        client = self._client
        assert client is not None
        replica = self.state.replica_id
        own = self.state.local_load()
        ttl = int(self.ttl * 1000)
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self._own_key, orjson.dumps(own.endpoints), px=ttl)
            pipe.set(self._plugin_load_key(replica), orjson.dumps(own.plugins), px=ttl)
            pipe.sadd(self._members, replica)
            pipe.smembers(self._members)
            results: list[Any] = await pipe.execute()
        members = sorted(m.decode() for m in results[3] if m.decode() != replica)
        loads: list[ReplicaLoad] = []
        if members:
            keys = [key for m in members for key in (self._load_key(m), self._plugin_load_key(m))]
            values = await client.mget(keys)
            pairs = list(zip(values[::2], values[1::2], strict=True))
            gone = [m for m, (value, _) in zip(members, pairs, strict=True) if value is None]
            if gone:
                await client.srem(self._members, *gone)
            loads = [
                ReplicaLoad(
                    _endpoint_load(orjson.loads(value)),
                    {name: _endpoint_load(load) for name, load in orjson.loads(plugins or b"{}").items()},
                )
                for value, plugins in pairs
                if value is not None
            ]
        self._succeeded()
        self.metrics.peers.set(len(loads))
        self.state.apply_peer_load(loads)


def _endpoint_load(load: dict[str, Any]) -> dict[str, EndpointLoad]:
    return {name: (int(v[0]), int(v[1])) for name, v in load.items()}


def _later(entry: str | bytes | None, other: str) -> str:
    """The later of two Redis stream ids (`<ms>-<seq>`)."""
    if entry is None:
        return other
    text = entry.decode() if isinstance(entry, bytes) else entry
    key = tuple(int(part) for part in text.split("-"))
    return text if key > tuple(int(part) for part in other.split("-")) else other
