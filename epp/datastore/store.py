"""The datastore: the set of endpoints discovery reports, keyed by name, with change listeners."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from epp.datastore.endpoint import Endpoint, EndpointSpec
from epp.datastore.roles import DECODE_STAGE

log = logging.getLogger(__name__)

Listener = Callable[[Endpoint], None]


class Datastore:
    """Holds Endpoint objects. Reconciling keeps an endpoint's object (and so its metrics and
    in-flight counts) while its spec is unchanged, so discovery refreshes never reset load."""

    def __init__(self) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._snapshot: tuple[Endpoint, ...] = ()
        self._on_added: list[Listener] = []
        self._on_removed: list[Listener] = []
        self.synced = False
        # Whether some endpoint serves other than the decode stage alone (an `llm-d.ai/role` other
        # than decode): flow control splits the pool by stage only then (epp.flowcontrol).
        self.staged = False

    def subscribe(self, on_added: Listener | None = None, on_removed: Listener | None = None) -> None:
        """Be told of endpoints as they come and go; existing endpoints are reported as added."""
        if on_added is not None:
            self._on_added.append(on_added)
            for endpoint in self._snapshot:
                on_added(endpoint)
        if on_removed is not None:
            self._on_removed.append(on_removed)

    def endpoints(self) -> tuple[Endpoint, ...]:
        """All known endpoints, healthy or not (an immutable snapshot, cheap to take)."""
        return self._snapshot

    def ready_endpoints(self) -> list[Endpoint]:
        """Endpoints in rotation. One whose metrics scrape is overdue (a hung server, whose last
        figures look idle) is left out while any other is in rotation, and kept as a last resort
        so a pool of only slow servers still routes."""
        now = time.monotonic()
        snapshot = self._snapshot
        prompt = [e for e in snapshot if e.healthy and e.suspended_until <= now and not e.scrape_overdue]
        return prompt or [e for e in snapshot if e.healthy and e.suspended_until <= now]

    def get(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def upsert(self, spec: EndpointSpec) -> Endpoint:
        """Add an endpoint, or update one. A change of labels, models or namespace (a pod
        relabelled) updates the endpoint in place, keeping its load, health, metrics and prefix
        history; a new address or port is a new server, so the old endpoint is removed first."""
        current = self._endpoints.get(spec.name)
        if current is not None and _same_server(current.spec, spec):
            if current.spec != spec:
                log.info("endpoint updated: %s labels=%s", spec.name, dict(spec.labels))
                current.spec = spec
                self._refresh()
            return current
        if current is not None:
            self._remove(spec.name)
        endpoint = Endpoint(spec)
        self._endpoints[spec.name] = endpoint
        self._refresh()
        log.info("endpoint added: %s %s labels=%s", spec.name, spec.hostport, dict(spec.labels))
        for listener in self._on_added:
            listener(endpoint)
        return endpoint

    def remove(self, name: str) -> None:
        if name in self._endpoints:
            self._remove(name)

    def replace_all(self, specs: Iterable[EndpointSpec]) -> None:
        """Make the datastore hold exactly these endpoints."""
        wanted = {spec.name: spec for spec in specs}
        for name in [n for n in self._endpoints if n not in wanted]:
            self._remove(name)
        for spec in wanted.values():
            self.upsert(spec)
        self.synced = True

    def clear(self) -> None:
        for name in list(self._endpoints):
            self._remove(name)

    def _remove(self, name: str) -> None:
        endpoint = self._endpoints.pop(name)
        self._refresh()
        log.info("endpoint removed: %s %s", name, endpoint.hostport)
        for listener in self._on_removed:
            listener(endpoint)

    def _refresh(self) -> None:
        self._snapshot = tuple(self._endpoints.values())
        self.staged = any(e.spec.stages != DECODE_STAGE for e in self._snapshot)


def _same_server(old: EndpointSpec, new: EndpointSpec) -> bool:
    return (old.address, old.port, old.metrics_port) == (new.address, new.port, new.metrics_port)
