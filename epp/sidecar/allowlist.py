"""SSRF protection: the prefill targets the sidecar may call. A client can send its own
`x-prefiller-host-port` through the gateway, so only current endpoints of the pool are allowed,
matched on host AND port (llm-d matches the host only, llm-d-router#979, which lets a client reach
any port of a pool pod).

An AllowListSource owns an AllowList and feeds it with `replace()`: PoolSource (poolsource.py)
follows the InferencePool through the Kubernetes API (llm-d's `--inference-pool`),
EndpointFileSource the standalone EPP's endpoint file; `follow()` keeps a list in step with any
Datastore."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from epp.datastore import Datastore, Endpoint
from epp.discovery.static import FileDiscovery
from epp.sidecar.hostport import HostPort

log = logging.getLogger(__name__)


class AllowList:
    """The current set of allowed `host:port` targets. Empty and unsynced until a source reports."""

    def __init__(self) -> None:
        self._allowed: frozenset[HostPort] = frozenset()
        self.synced = False

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

    def allows(self, target: HostPort) -> bool:
        return target in self._allowed

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
