"""The precise prefix index kept in Redis (or Valkey), so several EPP replicas share one view of
what each pod holds: llm-d's `redisConfig` / `valkeyConfig` index backend.

Each replica still applies the KV events it receives itself (`KVBlockIndexBase`: which request
keys an engine block stands for needs the pod's earlier blocks), and writes what changed to Redis;
every replica's lookups read what all of them wrote. Layout, under `keyPrefix`:

- `<prefix><request key>` (decimal, as llm-d names its keys): a hash `{pod: "<generation>:<tier
  weight>"}`, a holder keeping its highest tier weight; at most `podCacheSize` holders (the oldest
  goes), and a TTL set when the key is created and refreshed whenever a lookup matches it (an LRU by
  time: a key no request matched for that long served none);
- `<prefix>generation:<pod>`: the pod's generation, drawn from the counter `<prefix>generations`
  when a write finds the pod without one, so none is issued twice. Clearing a pod (it left the
  pool, its publisher restarted, `AllBlocksCleared`) deletes it, which retires every entry the pod
  had at once, written by any replica; stale entries are deleted when a lookup or a write meets
  them. Its TTL is the block keys', renewed by the pod's writes and by lookups its run matched: a
  pod neither written nor matched for that long loses its entries, as an unmatched key does, and
  an expired (or evicted) generation can never make stale entries valid again.

Writes are queued by the (synchronous) event path and sent in batches by one task, one script
call per batch. A lookup is one script call too: it walks the prompt's keys from the first and
stops where no pod's run continues, so it costs the prompt's block count, and returns each pod's
tier-weighted run length (llm-d's LongestPrefix). Both run on redis-py's asyncio client.

Redis unreachable (at start or later): lookups answer None (the scorer scores nothing) and are not
tried again for `RETRY_INTERVAL`; writes wait in a bounded queue (the oldest dropped beyond
`MAX_PENDING`) and are retried; every failure is counted and the outage logged once, with its end.
Scripts address keys they are not given as KEYS: one Redis server (or a primary), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Unpack
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

from epp.datalayer.kvblocks import IndexOptions, KVBlockIndexBase, TokenProcessor
from epp.datalayer.redis_address import (
    DEFAULT_ADDRESS,
    DEFAULT_LOOKUP_TIMEOUT,
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    redis_url,
)
from epp.metrics.families import Families
from epp.metrics.per_registry import PerRegistry
from epp.tasks import cancel_and_wait, cancel_until_done

log = logging.getLogger(__name__)

BATCH = 2048  # queued writes per script call
MAX_PENDING = 500_000  # queued writes kept while Redis is slow or gone
RETRY_INTERVAL = 1.0  # seconds between attempts while Redis does not answer
WRITE_TIMEOUT = 2.0
STOP_TIMEOUT = 2.0

# A pod's entries are valid under its current generation, `<prefix>generation:<pod>`: "g<n>", n
# drawn from the counter `<prefix>generations`, so a generation is never issued twice and a pod
# whose key is gone (cleared, expired, evicted) has no valid entries until a write makes a new one.
_GENERATION = """
local gens = {}
local function gen(prefix, pod)
  local g = gens[pod]
  if g == nil then
    g = redis.call('GET', prefix .. 'generation:' .. pod) or ''
    gens[pod] = g
  end
  return g
end
"""

# ARGV: prefix, ttl ms, podCacheSize, then the ops, one a line: `h key pod weight` | `d key pod` |
# `c pod` (one argument: cheaper to send and to parse than four per op). Returns how many block
# keys it created.
WRITE_SCRIPT = (
    _GENERATION
    + """
local prefix, ttl, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local created, renewed = 0, {}
local function own(pod)  -- the generation pod's writes use, made if it has none; its TTL renewed
  local g = gen(prefix, pod)
  if not renewed[pod] then
    renewed[pod] = true
    local name = prefix .. 'generation:' .. pod
    if g == '' then
      g = 'g' .. redis.call('INCR', prefix .. 'generations')
      gens[pod] = g
      redis.call('SET', name, g)
    end
    if ttl > 0 then redis.call('PEXPIRE', name, ttl) end
  end
  return g
end
for op, a, b, weight in string.gmatch(ARGV[4], '(%a) (%S+) ?(%S*) ?(%S*)') do
  if op == 'h' then
    local key, pod = prefix .. a, b
    local g = own(pod)
    local current = redis.pcall('HGET', key, pod)
    if type(current) == 'table' and current.err then
      redis.call('DEL', key)  -- not a hash of ours: replaced
      current = false
    end
    local cg, cw = nil, nil
    if current then cg, cw = string.match(current, '^(g%d+):(.*)$') end
    if cg ~= g or (tonumber(cw) or 0) < tonumber(weight) then
      redis.call('HSET', key, pod, g .. ':' .. weight)
      local size = redis.call('HLEN', key)
      if size == 1 then
        created = created + 1
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) end  -- from then on, lookups refresh it
      end
      if size > cap then
        local held = redis.call('HGETALL', key)
        for j = 1, #held, 2 do  -- stale generations first, then the oldest other holder
          if held[j] ~= pod and string.match(held[j + 1], '^(g%d+):') ~= gen(prefix, held[j]) then
            redis.call('HDEL', key, held[j])
            size = size - 1
          end
        end
        for j = 1, #held, 2 do
          if size <= cap then break end
          if held[j] ~= pod and redis.call('HDEL', key, held[j]) == 1 then size = size - 1 end
        end
      end
    end
  elseif op == 'd' then
    redis.pcall('HDEL', prefix .. a, b)
  else
    redis.call('DEL', prefix .. 'generation:' .. a)
    gens[a], renewed[a] = '', nil
  end
end
return created
"""
)

# ARGV: prefix, ttl ms, the keys (decimal, space-separated), then (key position, pod) pairs of
# speculative holders. Returns {depth, pod, score, pod, score, ...}: each pod's tier-weighted run
# from the first key. `reached[pod]` is how many keys the pod's run covers (no table per key); a
# value written as "<current generation>:1.0" is recognised without parsing it.
LOOKUP_SCRIPT = (
    _GENERATION
    + """
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
local guessed = {}
for j = 4, #ARGV, 2 do
  local at = tonumber(ARGV[j])
  guessed[at] = guessed[at] or {}
  guessed[at][#guessed[at] + 1] = ARGV[j + 1]
end
local unit, reached, scores, order, depth = {}, {}, {}, {}, 0
local function extend(pod, w)
  if (reached[pod] or 0) == depth then
    reached[pod] = depth + 1
    if scores[pod] == nil then order[#order + 1] = pod end
    scores[pod] = (scores[pod] or 0) + w
    return true
  end
  return false
end
for block in string.gmatch(ARGV[3], '%d+') do
  local key = prefix .. block
  local held = redis.pcall('HGETALL', key)
  if held.err then held = {} end
  local any = false
  for j = 1, #held, 2 do
    local pod = held[j]
    if (reached[pod] or 0) == depth then  -- a pod whose run already ended is not even parsed
      local value, expected = held[j + 1], unit[pod]
      if expected == nil then
        expected = gen(prefix, pod) .. ':1.0'
        unit[pod] = expected
      end
      local w = 1
      if value ~= expected then
        local g, text = string.match(value, '^(g%d+):(.*)$')
        w = g == gen(prefix, pod) and tonumber(text) or nil
        if w == nil then redis.call('HDEL', key, pod) end
      end
      if w ~= nil then
        reached[pod] = depth + 1
        if depth == 0 then
          order[#order + 1] = pod
          if ttl > 0 then redis.call('PEXPIRE', prefix .. 'generation:' .. pod, ttl) end
        end
        scores[pod] = (scores[pod] or 0) + w
        any = true
      end
    end
  end
  for _, pod in ipairs(guessed[depth + 1] or {}) do
    if extend(pod, 1) then any = true end
  end
  if not any then break end
  if ttl > 0 and #held > 0 then redis.call('PEXPIRE', key, ttl) end
  depth = depth + 1
end
local out = {depth}
for _, pod in ipairs(order) do
  out[#out + 1] = pod
  out[#out + 1] = tostring(scores[pod])
end
return out
"""
)


def redacted(url: str) -> str:
    """`url` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisIndexMetrics(PerRegistry):
    """The Redis backend's health (ours; llm-d's Redis index exports none)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        f = Families(registry, prefix="epp_kv_index_redis_", alpha=False)
        self.errors = f.counter("errors_total", "Redis index operations that failed", ["operation"])
        self.skipped = f.counter(
            "lookups_skipped_total",
            "lookups not tried (scored without the index): Redis did not answer the last attempt, "
            "or the index was not running (before start, after stop)",
        )
        self.dropped = f.counter(
            "writes_dropped_total",
            "index writes dropped: the queue waiting for Redis was full, or Redis refused their batch",
        )
        self.pending = f.gauge("pending_writes", "index writes waiting to be sent")
        self.up = f.gauge("up", "1 while Redis answers the index, 0 while it does not")


class RedisKVBlockIndex(KVBlockIndexBase):
    """The KV-block index with `request key -> {pod: tier weight}` in Redis; `start` before use."""

    def __init__(
        self,
        processor: TokenProcessor,
        address: str = DEFAULT_ADDRESS,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        ttl: float = DEFAULT_TTL,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
        redis_metrics: RedisIndexMetrics | None = None,
        **options: Unpack[IndexOptions],
    ) -> None:
        super().__init__(processor, **options)
        self.url = redis_url(address)
        self.key_prefix = key_prefix
        self.ttl = ttl
        self.lookup_timeout = lookup_timeout
        self.redis_metrics = redis_metrics or RedisIndexMetrics(None)
        self._header = (key_prefix, str(round(ttl * 1000)), str(self.pod_cache_size))
        self._pending: deque[str] = deque()  # ops, one a line of the write script's argument
        self._unsafe_pods: set[str] = set()
        self._wake = asyncio.Event()
        self._lookups: aioredis.Redis | None = None
        self._writes: aioredis.Redis | None = None
        self._lookup_script: AsyncScript | None = None
        self._write_script: AsyncScript | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._down = False
        self._in_flight = 0  # writes taken off the queue, not yet acknowledged
        self._refusal_logged = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connects and starts the writer; returns at once whether Redis answers or not."""
        no_retry = Retry(NoBackoff(), 0)
        self._lookups = aioredis.from_url(
            self.url,
            socket_timeout=self.lookup_timeout,
            socket_connect_timeout=self.lookup_timeout,
            retry=no_retry,
        )
        self._writes = aioredis.from_url(
            self.url, socket_timeout=WRITE_TIMEOUT, socket_connect_timeout=WRITE_TIMEOUT, retry=no_retry
        )
        self._lookup_script = self._lookups.register_script(LOOKUP_SCRIPT)
        self._write_script = self._writes.register_script(WRITE_SCRIPT)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever(), name="kv-index-redis")
        try:
            await self._writes.ping()
        except (RedisError, OSError) as exc:
            self._failed("connect", exc)
        else:
            self._recovered()
        self._wake.set()

    async def stop(self) -> None:
        """Sends what is queued (for at most STOP_TIMEOUT), then closes the connections."""
        if self._flusher is not None:
            deadline = time.monotonic() + STOP_TIMEOUT
            while (self._pending or self._in_flight) and not self._down and time.monotonic() < deadline:
                self._wake.set()
                await asyncio.sleep(0.01)
            cancel_until_done(self._flusher)  # redis-py's sends can lose a cancellation
            await cancel_and_wait(self._flusher)
            self._flusher = None
        for client in (self._lookups, self._writes):
            if client is not None:
                await client.aclose()
        self._lookups = self._writes = None
        self._lookup_script = self._write_script = None

    # --- writes -------------------------------------------------------------------------------

    def _queue(self, ops: Iterable[str]) -> None:
        pending = self._pending
        pending.extend(ops)
        excess = len(pending) - MAX_PENDING
        if excess > 0:
            for _ in range(excess):
                pending.popleft()
            self.redis_metrics.dropped.inc(excess)
        self._wake.set()

    def _safe(self, pod: str) -> bool:
        """Pods are endpoints (`ip:port`); a name with whitespace would break an op's line."""
        if not any(c.isspace() for c in pod):
            return True
        if pod not in self._unsafe_pods:
            self._unsafe_pods.add(pod)
            log.warning("KV-block index: pod name %r has whitespace; its blocks are not shared", pod)
        return False

    def _hold(self, keys: Sequence[int], pod: str, weight: float) -> None:
        if keys and self._safe(pod):
            tail = f" {pod} {weight!r}"
            self._queue([f"h {key}{tail}" for key in keys])

    def _drop_holder(self, key: int, pod: str) -> None:
        if self._safe(pod):
            self._queue((f"d {key} {pod}",))

    def _forget_pod(self, pod: str, keys: Iterable[int]) -> None:
        """Every entry of `pod`, whichever replica wrote it: its generation moves on."""
        if self._safe(pod):
            self._queue((f"c {pod}",))

    def lost_events(self, pod: str) -> None:
        """Only this replica missed them (each receives the events itself): the others applied
        them to the shared entries, which stay, as llm-d's index keeps them through any gap. This
        replica forgets the pod's engine blocks, which it can no longer follow, and learns them
        again from the next stores; a removal no replica received leaves its entries to the TTL."""
        self._pods.pop(pod, None)

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    async def _flush_forever(self) -> None:
        pending = self._pending
        assert self._write_script is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while pending:
                batch = [pending.popleft() for _ in range(min(BATCH, len(pending)))]
                self._in_flight = len(batch)
                try:
                    created = await self._write_script(
                        args=[*self._header, "\n".join(batch)], client=self._writes
                    )
                except ResponseError as exc:  # Redis answered: the batch itself was refused
                    self._in_flight = 0
                    self._refused("write", exc, len(batch))
                    continue
                except (RedisError, OSError) as exc:
                    self._in_flight = 0
                    self._failed("write", exc)
                    pending.extendleft(reversed(batch))
                    self._queue(())  # trimmed to MAX_PENDING
                    self.redis_metrics.pending.set(len(pending))
                    await asyncio.sleep(RETRY_INTERVAL)
                    continue
                self._in_flight = 0
                self._recovered()
                self.redis_metrics.pending.set(len(pending))
                if self.metrics is not None and created:
                    self.metrics.admissions.inc(created)

    async def flushed(self, timeout: float = 5.0) -> None:
        """Returns once every queued write was sent (tests and benchmarks); TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while self._pending or self._in_flight:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._pending)} index writes still queued for Redis")
            self._wake.set()
            await asyncio.sleep(0.001)

    # --- lookups ------------------------------------------------------------------------------

    async def lookup(self, keys: Sequence[int]) -> dict[str, float] | None:
        """Each pod's tier-weighted run of `keys` from the first (llm-d's LongestPrefix, for
        every pod; the caller keeps its candidates). None when Redis does not answer, or the
        index is not running (before `start`, after `stop`: requests still in flight at shutdown
        are scored without it)."""
        if not keys:
            return {}
        if self._lookup_script is None or time.monotonic() < self._retry_at:
            self.redis_metrics.skipped.inc()
            return None
        args: list[str | int] = [self.key_prefix, self._header[1], " ".join(map(str, keys))]
        if self._speculative:
            args += self._guessed(keys)
        started = time.perf_counter()
        try:
            reply = await self._lookup_script(args=args, client=self._lookups)
        except ResponseError as exc:
            self._refused("lookup", exc, 0)
            return None
        except (RedisError, OSError) as exc:
            self._failed("lookup", exc)
            return None
        self._recovered()
        depth = int(reply[0])
        scores = {pod.decode(): float(score) for pod, score in zip(reply[1::2], reply[2::2], strict=True)}
        self._count_lookup(depth, started)
        return scores

    def _guessed(self, keys: Sequence[int]) -> list[str | int]:
        """(position, pod) of this replica's speculative holders of `keys`."""
        out: list[str | int] = []
        speculative = self._speculative
        for position, key in enumerate(keys, 1):
            for pod in speculative.get(key, ()):
                out += (position, pod)
        return out

    # --- health -------------------------------------------------------------------------------

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.redis_metrics.errors.labels(operation).inc()
        self._retry_at = time.monotonic() + RETRY_INTERVAL
        if not self._down:
            self._down = True
            self.redis_metrics.up.set(0)
            log.warning(
                "KV-block index: Redis at %s does not answer (%s: %s); requests are scored without the "
                "index and its writes are queued (at most %d) until it does",
                redacted(self.url),
                type(exc).__name__,
                exc,
                MAX_PENDING,
            )

    def _refused(self, operation: str, exc: ResponseError, dropped: int) -> None:
        """Redis answered with an error (a script refused by the server, a read-only replica):
        not an outage, so nothing waits for it; counted, logged once."""
        self.redis_metrics.errors.labels(operation).inc()
        self.redis_metrics.dropped.inc(dropped)
        if not self._refusal_logged:
            self._refusal_logged = True
            log.error(
                "KV-block index: Redis refused a %s (%s); counted and skipped from now on", operation, exc
            )

    def _recovered(self) -> None:
        self._retry_at = 0.0
        if self._down:
            self._down = False
            log.warning("KV-block index: Redis at %s answers again", redacted(self.url))
        self.redis_metrics.up.set(1)
