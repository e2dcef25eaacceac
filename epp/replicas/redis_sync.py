"""`RedisReplicaSync`: a replica's shared state through Redis, the engine operators already run
for this (Kthena and AIBrix keep router state there).

- Routes: every routed request's prefix blocks are published on the channel `<ns>:routes`
  (batched, pipelined, one message per route); every replica subscribes and learns the others'.
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
from collections import deque
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from epp.replicas.state import EndpointLoad, ReplicaState, RouteMessage

log = logging.getLogger(__name__)

MAX_OUTBOX = 10_000  # routes waiting for Redis; beyond this (Redis slow or gone) the oldest drop
BATCH = 256  # routes per pipelined round trip


class ReplicaSyncMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.errors = Counter(
            "epp_replica_sync_errors_total",
            "Redis operations of the replica sync that failed (the replica routes on local state)",
            ["operation"],
            registry=registry,
        )
        self.routes = Counter(
            "epp_replica_sync_routes_total",
            "prefix routes shared with other replicas: sent, received, dropped (outbox full)",
            ["direction"],
            registry=registry,
        )
        self.connected = Gauge(
            "epp_replica_sync_connected", "1 while Redis answers, 0 while on local state", registry=registry
        )
        self.peers = Gauge(
            "epp_replica_sync_peers", "other replicas whose load is counted", registry=registry
        )


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
        self.subscribed = False  # to the routes channel, right now
        self._outage_logged = False
        self._client: aioredis.Redis | None = None
        self._outbox: deque[RouteMessage] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel = f"{namespace}:routes"
        self._members = f"{namespace}:replicas"
        self._own_key = self._load_key(state.replica_id)

    def _load_key(self, replica: str) -> str:
        return f"{self.namespace}:load:{replica}"

    async def start(self) -> None:
        """Starts the background tasks and returns at once, Redis reachable or not."""
        self._client = aioredis.from_url(
            self.url, socket_timeout=max(self.interval * 5, 0.5), socket_connect_timeout=1.0
        )
        self.state.on_route = self._enqueue
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._publish_routes(), name="replica-sync-publish"),
            loop.create_task(self._subscribe_routes(), name="replica-sync-subscribe"),
            loop.create_task(self._exchange_load(), name="replica-sync-load"),
        ]

    async def stop(self) -> None:
        self.state.on_route = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(self._own_key)
                await self._client.srem(self._members, self.state.replica_id)
            await self._client.aclose()
            self._client = None
        self.state.apply_peer_load(())

    def _enqueue(self, message: RouteMessage) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self._outbox.popleft()
            self.metrics.routes.labels("dropped").inc()
        self._outbox.append(message)
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
        assert self._client is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(BATCH, len(self._outbox)))]
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for message in batch:
                            pipe.publish(self._channel, message.encode())
                        await pipe.execute()
                except (RedisError, OSError) as error:
                    self._failed("publish", error)
                    self._outbox.clear()  # stale by the time Redis is back
                    self.metrics.routes.labels("dropped").inc(len(batch))
                    break
                self.metrics.routes.labels("sent").inc(len(batch))

    async def _subscribe_routes(self) -> None:
        assert self._client is not None
        received = self.metrics.routes.labels("received")
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.subscribed = True
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    route = RouteMessage.decode(message["data"])
                    if self.state.apply_route(route):
                        received.inc()
            except (RedisError, OSError, ValueError) as error:
                self._failed("subscribe", error)
            finally:
                self.subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(self.interval)  # back off before resubscribing

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
        own = orjson.dumps(self.state.local_load())
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self._own_key, own, px=int(self.ttl * 1000))
            pipe.sadd(self._members, replica)
            pipe.smembers(self._members)
            results: list[Any] = await pipe.execute()
        members = sorted(m.decode() for m in results[2] if m.decode() != replica)
        loads: list[dict[str, EndpointLoad]] = []
        if members:
            values = await client.mget([self._load_key(m) for m in members])
            gone = [m for m, value in zip(members, values, strict=True) if value is None]
            if gone:
                await client.srem(self._members, *gone)
            loads = [
                {name: (int(v[0]), int(v[1])) for name, v in orjson.loads(value).items()}
                for value in values
                if value is not None
            ]
        self._succeeded()
        self.metrics.peers.set(len(loads))
        self.state.apply_peer_load(loads)
