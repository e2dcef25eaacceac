"""The JSON API, the event stream and the web view, as aiohttp routes for the metrics server.

| route | what |
|---|---|
| `GET /` | redirects to `/ui/` |
| `GET /ui/` (+ `/ui/app.js`, `/ui/app.css`) | the live web view (package data, no external assets) |
| `GET /api/endpoints` | the pool's endpoints with their live state |
| `GET /api/decisions?limit=N&endpoint=NAME` | recent decision records, newest first |
| `GET /api/decisions/{request_id}` | the records of one request id (404 when none is kept) |
| `GET /api/events` | server-sent events: `endpoints` every second, `decision` for each new record |

The event stream runs on the loop that serves ext_proc, so what subscribers cost is bounded: the
`endpoints` event is built once per quarter period and its bytes shared by every subscriber (not
rebuilt for each: 2 ms for 256 endpoints, so 500 viewers would have taken the whole loop), and
at most MAX_STREAMS are open at once (a further one gets 503): a subscriber that never reads holds
only its socket's buffers, as writes wait for it to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from epp.datastore import Datastore, Endpoint
from epp.explain import DecisionRecorder
from epp.scheduling.prefix.index import PrefixIndex

MAX_LIMIT = 1000
INITIAL_DECISIONS = 50  # records an event-stream client gets when it connects
ENDPOINTS_PERIOD = 1.0  # seconds between `endpoints` events
BATCH_PERIOD = 0.1  # seconds between two batches of `decision` events
BATCH_RECORDS = 20  # records in one batch at most
ENDPOINTS_REUSE = ENDPOINTS_PERIOD / 4  # seconds the built `endpoints` event is shared between streams
MAX_STREAMS = 100  # event streams open at once
_STATIC = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}


def prefix_indexes(plugins: Mapping[str, object]) -> list[PrefixIndex]:
    """The prefix indexes of the configured plugins (approx-prefix-cache-producer's)."""
    found: list[PrefixIndex] = []
    for plugin in plugins.values():
        index = getattr(plugin, "index", None)
        if isinstance(index, PrefixIndex) and index not in found:
            found.append(index)
    return found


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class LiveView:
    def __init__(
        self,
        datastore: Datastore,
        recorder: DecisionRecorder,
        pool_name: str = "standalone",
        indexes: Iterable[PrefixIndex] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._datastore = datastore
        self._recorder = recorder
        self._pool_name = pool_name
        self._indexes = list(indexes)
        self._clock = clock
        self._streams: set[asyncio.Event] = set()
        self._closing = False
        self._endpoints_event: tuple[float, bytes] | None = None  # (built at, event bytes)
        self._static = {
            name: (resources.files(__package__).joinpath("static", name).read_bytes(), kind)
            for name, kind in _STATIC.items()
        }

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self._root),
            web.get("/ui", self._root),
            web.get("/ui/", self._page),
            web.get("/ui/{name}", self._asset),
            web.get("/api/endpoints", self._endpoints),
            web.get("/api/decisions", self._decisions),
            web.get("/api/decisions/{request_id}", self._decision),
            web.get("/api/events", self._events),
        ]

    async def on_shutdown(self, app: web.Application) -> None:
        """Let open event streams end, so the server stops without waiting for them."""
        self._closing = True
        for wake in self._streams:
            wake.set()

    # --- state ---------------------------------------------------------------------------------

    def endpoints_json(self) -> dict[str, Any]:
        now = self._clock()
        ready = {e.name for e in self._datastore.ready_endpoints()}
        index_blocks = sum(index.size() for index in self._indexes)
        endpoints = []
        for endpoint in self._datastore.endpoints():
            endpoints.append(self._endpoint_json(endpoint, endpoint.name in ready, now, index_blocks))
        options = self._recorder.options
        return {
            "pool": self._pool_name,
            "time": time.time(),
            "endpoints": endpoints,
            "prefix_index_blocks": index_blocks,
            "records": {
                "capacity": options.capacity,
                "sample_rate": options.sample_rate,
                "kept": len(self._recorder),
                "last_seq": self._recorder.last_seq,
            },
        }

    def _endpoint_json(
        self, endpoint: Endpoint, ready: bool, now: float, index_blocks: int
    ) -> dict[str, Any]:
        metrics = endpoint.metrics
        age = metrics.age(now)
        held = sum(index.blocks_held(endpoint) for index in self._indexes)
        if not endpoint.healthy:
            health = "unreachable"
        elif endpoint.suspended_until > now:
            health = "suspended"
        elif endpoint.scrape_overdue:
            health = "overdue"
        else:
            health = "ready"
        return {
            "name": endpoint.name,
            "address": endpoint.hostport,
            "namespace": endpoint.spec.namespace,
            "role": endpoint.role,
            "labels": dict(endpoint.labels),
            "models": sorted(endpoint.spec.models),
            "health": health,
            "ready": ready,
            "metrics_age_seconds": None if age == float("inf") else age,
            "waiting": metrics.waiting_queue_size,
            "running": metrics.running_requests_size,
            "kv_cache": metrics.kv_cache_usage,
            "lora_active": sorted(metrics.active_models),
            "lora_waiting": sorted(metrics.waiting_models),
            "lora_max": metrics.max_active_models,
            "inflight_requests": endpoint.inflight_requests,
            "inflight_tokens": endpoint.inflight_tokens,
            "prefix_blocks": held,
            "prefix_share": held / index_blocks if index_blocks else 0.0,
        }

    # --- handlers ------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def _page(self, request: web.Request) -> web.Response:
        return self._static_response("index.html")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound()
        return self._static_response(name)

    def _static_response(self, name: str) -> web.Response:
        body, kind = self._static[name]
        return web.Response(
            body=body, content_type=kind, charset="utf-8", headers={"Cache-Control": "no-cache"}
        )

    async def _endpoints(self, request: web.Request) -> web.Response:
        return _json(self.endpoints_json())

    async def _decisions(self, request: web.Request) -> web.Response:
        text = request.query.get("limit", "50")
        # ASCII digits only (int() also reads "2_0" and other scripts' digits, and refuses more
        # than 4,300 of them): anything longer than the cap is the cap.
        digits = text.lstrip("0") if text.isascii() and text.isdigit() else ""
        if not digits:
            message = f"limit must be a whole number of records from 1 (at most {MAX_LIMIT} are sent)"
            return _json({"error": message}, 400)
        limit = min(int(digits), MAX_LIMIT) if len(digits) <= len(str(MAX_LIMIT)) else MAX_LIMIT
        endpoint = request.query.get("endpoint") or None
        records = self._recorder.recent(limit, endpoint)
        return _json({"decisions": [r.to_json() for r in records]})

    async def _decision(self, request: web.Request) -> web.Response:
        records = self._recorder.by_request_id(request.match_info["request_id"])
        if not records:
            return _json({"error": "no decision kept for this request id"}, 404)
        return _json({"decisions": [r.to_json() for r in records]})

    def _shared_endpoints_event(self) -> bytes:
        """The `endpoints` event, built at most once per ENDPOINTS_REUSE for all streams."""
        now = self._clock()
        built = self._endpoints_event
        if built is None or now - built[0] >= ENDPOINTS_REUSE:
            built = self._endpoints_event = (now, _event("endpoints", self.endpoints_json()))
        return built[1]

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._streams) >= MAX_STREAMS:
            message = f"too many open event streams ({MAX_STREAMS}); poll /api/endpoints instead"
            return _json({"error": message}, 503)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        wake = asyncio.Event()
        self._streams.add(wake)  # counted from here, so a burst of connections cannot pass the cap
        unsubscribe = self._recorder.subscribe(wake.set)
        try:
            await response.prepare(request)
            seq = 0
            initial = self._recorder.recent(INITIAL_DECISIONS)
            for record in reversed(initial):
                await response.write(_event("decision", record.to_json()))
                seq = record.seq
            seq = max(seq, self._recorder.last_seq)
            next_endpoints = 0.0
            while not self._closing:
                now = self._clock()
                if now >= next_endpoints:
                    await response.write(self._shared_endpoints_event())
                    next_endpoints = now + ENDPOINTS_PERIOD
                # Under load only the newest records go out, at most every BATCH_PERIOD.
                for record in self._recorder.since(seq)[-BATCH_RECORDS:]:
                    await response.write(_event("decision", record.to_json()))
                seq = self._recorder.last_seq
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(next_endpoints - self._clock(), 0.01))
                if not self._closing:
                    await asyncio.sleep(BATCH_PERIOD)
        except ConnectionResetError:
            pass  # the viewer went away
        finally:
            unsubscribe()
            self._streams.discard(wake)
        return response


def _event(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
