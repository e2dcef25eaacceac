"""`previous-response-affinity-filter` (ours; neither GIE nor llm-d has one): a Responses API
request naming `previous_response_id` goes to the endpoint that made that response. vLLM keeps
stored responses in its process's memory, so any other replica answers 404 ("Response with id
'…' not found.").

The EPP learns response id -> endpoint from what passes through it: the id of the JSON answer
(a background one's, `queued`, too), or of a stream's response events (for those requests only,
the EPP reads the streamed chunks it otherwise asks the gateway to skip: an ext_proc message per
chunk), and the endpoint the gateway says served (`SERVED_ENDPOINT`: a data-parallel rank, not
its pod's primary port). Pins live in a bounded table (`maxEntries`, least recently set
dropped first; `ttlSeconds`), as session-affinity's sessions do, keyed by a 64-bit digest of the
id (however long the client's id, 8 bytes; and what active-active replicas share: each pin is a
route, `RouteLearner`, so a follow-up reaching another replica or `--workers` process finds it).
Requests that end at their headers and name a response by its id (GET /v1/responses/{id}, how a
background response is polled, and POST /v1/responses/{id}/cancel) go to its endpoint too
(`BodylessRouter`); an id not pinned goes to any ready endpoint, as every bodyless request.
A response whose endpoint is no longer a candidate (gone, unready, filtered out before) leaves
every candidate: the request is scheduled as any other and the model server it reaches answers
it (vLLM's 404, unless it holds the response), rather than the EPP refusing it.

Beside other replicas (a replica sync listens to the pins), a pin takes about a Redis round trip
to reach them, and a client's follow-up sent at once may arrive at one that has not got it yet.
A request naming a response this replica has no pin for (a follow-up's `previous_response_id`,
or the id of a bodyless call) therefore waits, before it is scheduled, for that pin to arrive:
at most `peerPinWaitSeconds`, at most `maxPinWaiters` requests at once (more are scheduled at
once, as without a peer), without holding the event loop (one future per awaited id, shared by
the requests awaiting it and resolved once when the pin arrives; a request whose client goes
away stops waiting). Then it proceeds as before: pinned if the pin came, else scheduled freely."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash
from prometheus_client import CollectorRegistry, Counter
from pydantic import Field

from epp.datalayer import AsyncDataProducer
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.headers import LB_NAMESPACE, SERVED_KEY
from epp.metrics.per_registry import PerRegistry
from epp.requestcontrol import (
    RESPONSE_ID,
    SERVED_ENDPOINT,
    BodylessRouter,
    ResponseBodyReader,
    ResponseComplete,
    ResponseHeaderProcessor,
)
from epp.requests import ApiKind, InferenceRequest, Usage
from epp.scheduling.framework import Filter
from epp.scheduling.session_affinity import PinTable
from epp.scheduling.types import SchedulingResult


class PreviousResponseAffinityParams(PluginParams):
    ttl_seconds: float = Field(default=86400, gt=0)  # since the response (or a follow-up) was made
    max_entries: int = Field(default=100_000, ge=1)
    sweep_seconds: float = Field(default=60, gt=0)
    # Beside peer replicas: how long a request naming an unpinned response waits for a peer's pin
    # (0: never), and how many requests may wait at once.
    peer_pin_wait_seconds: float = Field(default=0.05, ge=0, le=5)
    max_pin_waiters: int = Field(default=1000, ge=1)


ARRIVED, TIMED_OUT, FULL, CANCELLED = "arrived", "timeout", "full", "cancelled"


class PinWaitMetrics(PerRegistry):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.waits = Counter(
            "epp_previous_response_pin_waits_total",
            "requests naming a response with no pin here that waited for a peer replica's pin, by "
            "outcome: arrived, timeout, full (too many waiting: not waited), cancelled (client gone)",
            ["plugin_name", "outcome"],
            registry=registry,
        )


@dataclass(slots=True)
class _Awaited:
    future: asyncio.Future[None]
    waiters: int = 0


@dataclass
class PinWaits:
    """The requests waiting for pins: one future per awaited key, shared by its waiters and
    resolved at most once (`arrived`); at most `limit` waiters at once. Each waiter leaves exactly
    once (arrived, timed out or cancelled), the last one dropping its key's future."""

    limit: int
    waiting: int = 0
    _awaited: dict[int, _Awaited] = field(default_factory=dict)

    async def wait(self, key: int, timeout: float) -> str:
        """Until `key` arrives or `timeout` seconds pass; the outcome (one of the metric's)."""
        if self.waiting >= self.limit:
            return FULL
        entry = self._awaited.get(key)
        if entry is None:
            entry = self._awaited[key] = _Awaited(asyncio.get_running_loop().create_future())
        entry.waiters += 1
        self.waiting += 1
        try:
            # asyncio.wait neither cancels the shared future on a timeout nor on this task's
            # cancellation (the client gone): the other waiters keep it.
            done, _ = await asyncio.wait((entry.future,), timeout=timeout)
            return ARRIVED if done else TIMED_OUT
        finally:
            self.waiting -= 1
            entry.waiters -= 1
            if entry.waiters == 0:
                if self._awaited.get(key) is entry:
                    del self._awaited[key]
                entry.future.cancel()  # a no-op once resolved

    def arrived(self, keys: Sequence[int]) -> None:
        if not self._awaited:
            return
        for key in keys:
            entry = self._awaited.pop(key, None)
            if entry is not None and not entry.future.done():
                entry.future.set_result(None)


def response_key(response_id: str) -> int:
    return xxhash.xxh3_64_intdigest(response_id.encode(errors="surrogatepass"))


def addressed_response_id(path: str) -> str | None:
    """The id a bodyless Responses API call names: GET (or DELETE) /v1/responses/{id}, or
    POST /v1/responses/{id}/cancel."""
    parts = path.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "responses" and parts[-1]:
        return parts[-1]
    if len(parts) >= 5 and parts[-3] == "responses" and parts[-1] == "cancel" and parts[-2]:
        return parts[-2]
    return None


def previous_response_id(request: InferenceRequest) -> str | None:
    value = request.body.get("previous_response_id") if request.api is ApiKind.RESPONSES else None
    return value if isinstance(value, str) and value else None


@register
class PreviousResponseAffinityFilter(
    Plugin,
    Filter,
    AsyncDataProducer,
    BodylessRouter,
    ResponseBodyReader,
    ResponseHeaderProcessor,
    ResponseComplete,
):
    type_name = "previous-response-affinity-filter"
    Params = PreviousResponseAffinityParams

    def __init__(self, name: str, params: PreviousResponseAffinityParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.pins: PinTable[int] = PinTable(
            params.ttl_seconds, params.sweep_seconds, context.clock, params.max_entries
        )
        # Active-active replicas: told each pin learned here (epp.replicas.RouteLearner).
        self.route_listeners: list[Callable[[Endpoint, Sequence[int]], None]] = []
        self.peer_pin_wait = params.peer_pin_wait_seconds
        self.waits = PinWaits(params.max_pin_waiters)
        waits = PinWaitMetrics.for_registry(context.metrics.registry).waits
        self._outcomes = {o: waits.labels(name, o) for o in (ARRIVED, TIMED_OUT, FULL, CANCELLED)}

    @property
    def awaits_requests(self) -> bool:
        """Only beside peer replicas (a replica sync listens to the pins) can a missing pin be
        on its way."""
        return bool(self.route_listeners) and self.peer_pin_wait > 0

    async def prepare_async(self, request: InferenceRequest) -> None:
        """A follow-up naming a response not pinned here: wait (bounded) for a peer's pin."""
        previous = previous_response_id(request)
        waiting = self._pin_wait(previous) if previous is not None else None
        if waiting is not None:
            await waiting

    def bodyless_wait(self, request: InferenceRequest) -> Awaitable[None] | None:
        """GET or cancel of a response not pinned here: wait (bounded) for a peer's pin."""
        response_id = addressed_response_id(request.path)
        return self._pin_wait(response_id) if response_id is not None else None

    def _pin_wait(self, response_id: str) -> Awaitable[None] | None:
        if not self.awaits_requests:
            return None
        key = response_key(response_id)
        return None if self.pins.get(key) is not None else self._await_pin(key)

    async def _await_pin(self, key: int) -> None:
        try:
            outcome = await self.waits.wait(key, self.peer_pin_wait)
        except asyncio.CancelledError:
            self._outcomes[CANCELLED].inc()
            raise
        self._outcomes[outcome].inc()

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        previous = previous_response_id(request)
        hostport = self.pins.get(response_key(previous)) if previous is not None else None
        if hostport is None:
            return candidates
        return [e for e in candidates if e.hostport == hostport] or candidates

    def bodyless_target(self, request: InferenceRequest, endpoints: Sequence[Endpoint]) -> Endpoint | None:
        """A background response's polling (GET /v1/responses/{id}) and its cancel go where it was
        made: vLLM holds it in that process only."""
        response_id = addressed_response_id(request.path)
        hostport = self.pins.get(response_key(response_id)) if response_id is not None else None
        if hostport is None:
            return None
        return next((e for e in endpoints if e.hostport == hostport), None)

    def reads_response_body(self, request: InferenceRequest) -> bool:
        """A Responses API request the model server stores: `store` true or left out (vLLM stores
        when it is truthy, so not when false or null)."""
        return request.api is ApiKind.RESPONSES and request.body.get("store", True) not in (False, None)

    def response_headers(
        self, request: InferenceRequest, result: SchedulingResult, metadata: Mapping[str, Mapping[str, Any]]
    ) -> None:
        served = metadata.get(LB_NAMESPACE, {}).get(SERVED_KEY)
        if isinstance(served, str) and served:
            request.attributes[self.name] = served

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        response_id = request.attributes.get(RESPONSE_ID)
        if not isinstance(response_id, str) or not self.reads_response_body(request) or not result.targets:
            return
        # The endpoint that served as the director maps the gateway's report (a data-parallel
        # rank, not its pod's primary port); None: outside the pool, pinned by the reported address.
        endpoint = request.attributes.get(SERVED_ENDPOINT, result.targets[0])
        served = endpoint.hostport if isinstance(endpoint, Endpoint) else request.attributes.get(self.name)
        if not isinstance(served, str):
            return
        key = response_key(response_id)
        self.pins.set(key, served)
        self.waits.arrived((key,))
        # Peers learn it by endpoint; one outside the pool stays local.
        if isinstance(endpoint, Endpoint):
            for listener in self.route_listeners:
                listener(endpoint, (key,))

    def learn(self, endpoint: Endpoint, hashes: Sequence[int]) -> None:
        """Another replica pinned these responses to `endpoint`."""
        for key in hashes:
            self.pins.set(key, endpoint.hostport)
        self.waits.arrived(hashes)
