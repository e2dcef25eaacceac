"""List+watch one collection of Kubernetes objects into a local mirror, the way client-go's
reflector does, so the EPP follows the cluster without polling and without missing changes:

- list (paged) for a consistent snapshot and its resourceVersion, then watch from that version;
- a watch that ends (server timeout, proxy closing idle streams) resumes from the last version
  seen, including versions carried by BOOKMARK events, so nothing is replayed or lost;
- 410 Gone (the version was compacted away, on a watch or on a paged list) means the mirror can no
  longer be brought up to date by events: list again from scratch;
- any other failure (connection refused or dropped mid-stream, 5xx, 403) retries the watch from
  the last version after an exponential, jittered backoff.

The API calls are the `kubernetes_asyncio` client's own list functions, called with
`_preload_content=False` so the raw aiohttp response can be read line by line: its `Watch` helper
retries a 410 with the same stale version and hides a stream's end, which are exactly the events
a reflector has to act on."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from epp.discovery.k8s.model import Object

log = logging.getLogger(__name__)

# An API list function bound to its collection (namespace, selectors). Called with
# _preload_content=False it returns the raw aiohttp response, whatever its type hints say.
Lister = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class WatchTiming:
    # Server-side timeoutSeconds of one watch request, jittered up to twice this (as client-go
    # does) so many watchers do not reconnect in step.
    watch_timeout: float = 300.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    list_timeout: float = 60.0
    connect_timeout: float = 10.0
    page_size: int = 500


class ApiError(Exception):
    """The API server answered with a failure Status (or a non-JSON error body)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Gone(ApiError):
    """410: the requested resourceVersion (or continue token) is older than the server keeps."""


class ResourceNotServed(ApiError):
    """404 on a collection: the API group/version is not installed (no CRD)."""


def _raise_status(status: Any, http_code: int) -> None:
    """Raise for a Kubernetes Status object (or anything else an error response carried)."""
    code = status.get("code", http_code) if isinstance(status, dict) else http_code
    message = status.get("message", "") if isinstance(status, dict) else str(status)[:200]
    if code == 410:
        raise Gone(code, message)
    raise ApiError(code, message)


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status == 200:
        return
    body = await response.read()
    try:
        status = orjson.loads(body)
    except orjson.JSONDecodeError:
        status = body.decode(errors="replace")
    if response.status == 404:
        raise ResourceNotServed(404, str(status)[:200])
    _raise_status(status, response.status)


class Backoff:
    """Delays between consecutive failures: the first retry is immediate (a single dropped
    connection, e.g. an API server rolling over, should cost nothing), then exponential with
    full jitter up to a cap."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next(self) -> float:
        failures = self._failures
        self._failures += 1
        if failures == 0:
            return 0.0
        return random.uniform(0, min(self._maximum, self._initial * 2 ** (failures - 1)))


class Reflector:
    """Mirrors one collection into `items` (name -> object) and calls `on_change(self)` after the
    first list, every relist and every change event. `synced` turns true after the first list."""

    def __init__(
        self,
        what: str,
        lister: Lister,
        on_change: Callable[[Reflector], None],
        timing: WatchTiming,
        optional: bool = False,
    ) -> None:
        """`optional`: the collection is a CRD that may not be installed; a 404 on the list then
        ends `run` with ResourceNotServed instead of being retried forever."""
        self.what = what
        self.items: dict[str, Object] = {}
        self.synced = False
        self.resource_version = ""
        self._lister = lister
        self._on_change = on_change
        self._timing = timing
        self._optional = optional
        self._backoff = Backoff(timing.backoff_initial, timing.backoff_max)

    async def run(self) -> None:
        """List, then watch, until cancelled. Only a healthy watch resets the backoff, so a
        server that answers every watch with 410 cannot drive a tight list loop."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                if await self._watch():
                    self._backoff.reset()
                    continue
                log.debug("%s: watch ended early", self.what)
            except Gone as exc:
                log.info("%s: %s; listing again", self.what, exc)
                need_list = True
            except ResourceNotServed:
                if self._optional and need_list:
                    raise
                log.warning("%s: not served (404); is the CRD installed?", self.what)
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("%s: %s: %s", self.what, type(exc).__name__, exc)
            except Exception:
                # A malformed object or a bug in a change handler must not end discovery for
                # good: log it, list again from scratch.
                log.exception("%s: unexpected error; listing again", self.what)
                need_list = True
            await asyncio.sleep(self._backoff.next())

    async def _list(self) -> None:
        items: dict[str, Object] = {}
        continue_token: str | None = None
        timeout = aiohttp.ClientTimeout(total=self._timing.list_timeout)
        while True:
            response: aiohttp.ClientResponse = await self._lister(
                limit=self._timing.page_size,
                _continue=continue_token,
                _preload_content=False,
                _request_timeout=timeout,
            )
            async with response:
                await _check(response)
                body = orjson.loads(await response.read())
            for obj in body.get("items") or []:
                items[obj["metadata"]["name"]] = obj
            metadata = body.get("metadata") or {}
            continue_token = metadata.get("continue") or None
            if continue_token is None:
                break
        self.items = items
        self.resource_version = metadata.get("resourceVersion", "")
        self.synced = True
        log.debug("%s: listed %d at resourceVersion %s", self.what, len(items), self.resource_version)
        self._on_change(self)

    async def _watch(self) -> bool:
        """Stream events until the server ends the watch. True if the watch was healthy (lasted
        a good part of its timeout, or delivered events), so the next one can start at once."""
        seconds = int(self._timing.watch_timeout * random.uniform(1.0, 2.0))
        started = time.monotonic()
        events = 0
        response: aiohttp.ClientResponse = await self._lister(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
            _preload_content=False,
            # The server ends the stream after `seconds`; a read stalled well past that means
            # the connection died without a FIN.
            _request_timeout=aiohttp.ClientTimeout(
                sock_connect=self._timing.connect_timeout, sock_read=seconds + 30
            ),
        )
        async with response:
            await _check(response)
            async for line in response.content:
                if line.strip():
                    events += self._apply(orjson.loads(line))
        return events > 0 or time.monotonic() - started >= seconds / 2

    def _apply(self, event: Object) -> int:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            _raise_status(obj, 500)
        metadata = obj.get("metadata") or {}
        self.resource_version = metadata.get("resourceVersion", self.resource_version)
        if kind == "BOOKMARK":
            return 0
        if kind == "DELETED":
            self.items.pop(metadata["name"], None)
        elif kind in ("ADDED", "MODIFIED"):
            self.items[metadata["name"]] = obj
        else:
            log.warning("%s: ignoring watch event of type %r", self.what, kind)
            return 0
        self._on_change(self)
        return 1
