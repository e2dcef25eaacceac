"""SSRF protection: the prefill targets the sidecar may call. A client can send its own
`x-prefiller-host-port` through the gateway, so only current endpoints of the pool are allowed,
matched on host AND port (llm-d matches the host only, llm-d-router#979, which lets a client reach
any port of a pool pod).

An AllowListSource owns an AllowList and feeds it with `replace()`: PoolSource (poolsource.py)
follows the InferencePool through the Kubernetes API (llm-d's `--inference-pool`),
EndpointFileSource the standalone EPP's endpoint file; `follow()` keeps a list in step with any
Datastore."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from epp.datastore import Datastore, Endpoint
from epp.discovery.static import FileDiscovery
from epp.sidecar.hostport import HostPort

log = logging.getLogger(__name__)


class AllowList:
    """The current set of allowed `host:port` targets. Empty and unsynced until a source reports.

    `catch_up` (seconds) is how long `admits` waits for a target that is not allowed yet: a
    source that follows the pool by a watch learns of a pod turning Ready a little after the EPP
    may have picked it, and refusing in that gap would fail a request the pool allows."""

    def __init__(self, catch_up: float = 0.0) -> None:
        self._allowed: frozenset[HostPort] = frozenset()
        self.synced = False
        self._catch_up = catch_up
        # Resolved by the next `replace`; every waiting miss shares it.
        self._next_change: asyncio.Future[None] | None = None

    def replace(self, targets: Iterable[HostPort | str]) -> None:
        """Make exactly these targets allowed. Strings are `host:port` (the `ip:port` sets a pool
        watch reports); a malformed one is left out, and so never allowed."""
        allowed = set()
        for target in targets:
            try:
                allowed.add(target if isinstance(target, HostPort) else HostPort.parse(target))
            except ValueError as exc:
                log.warning("left out of the SSRF allowlist: %s", exc)
        self._allowed = frozenset(allowed)
        self.synced = True
        log.debug("SSRF allowlist: %d prefill targets", len(self._allowed))
        changed, self._next_change = self._next_change, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def allows(self, target: HostPort) -> bool:
        return target in self._allowed

    async def admits(self, target: HostPort) -> bool:
        """Whether `target` is allowed now or becomes allowed within `catch_up` seconds. The
        protection is unchanged (only what the source reports is ever admitted); a target that
        never appears is refused `catch_up` seconds late."""
        if target in self._allowed or self._catch_up <= 0:
            return target in self._allowed
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._catch_up
        while target not in self._allowed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._next_change is None:
                self._next_change = loop.create_future()
            # wait(), not wait_for(): a waiter timing out must not cancel the shared future.
            await asyncio.wait((self._next_change,), timeout=remaining)
        return True

    def __len__(self) -> int:
        return len(self._allowed)

    def follow(self, datastore: Datastore) -> None:
        """Track a datastore that any discovery keeps up to date."""

        def refresh(_: Endpoint | None = None) -> None:
            self.replace(endpoint.hostport for endpoint in datastore.endpoints())

        datastore.subscribe(on_added=refresh, on_removed=refresh)
        if datastore.synced:
            refresh()


class AllowListSource(Protocol):
    """Owns an AllowList and keeps it current while started. `start` returns only once the list
    holds the pool's current endpoints, or raises: a sidecar must not serve on a guess."""

    allowlist: AllowList

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class EndpointFileSource:
    """The standalone EPP's endpoint file (epp/discovery/static.py format), re-read on change; a
    broken edit keeps the last good list. The first load must succeed or the sidecar won't start."""

    def __init__(self, path: Path, poll_interval: float = 1.0) -> None:
        self.allowlist = AllowList()
        self._datastore = Datastore()
        self._discovery = FileDiscovery(path, self._datastore, poll_interval)

    async def start(self) -> None:
        await self._discovery.start()
        self.allowlist.follow(self._datastore)

    async def stop(self) -> None:
        await self._discovery.stop()
