"""One replica's shared state, independent of how it travels between replicas."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from epp.datastore import Datastore, Endpoint

RouteListener = Callable[[Endpoint, Sequence[int]], None]
EndpointLoad = tuple[int, int]  # (in-flight requests, in-flight tokens)


@runtime_checkable
class LoadSharer(Protocol):
    """A plugin keeping its own per-endpoint in-flight counts that every replica adds up (llm-d's
    cross-replica state: the inflight-load-producer, unless `syncCrossReplicaState: false`)."""

    name: str
    shares_load: bool

    def own_load(self) -> Mapping[str, EndpointLoad]:
        """This replica's counts by endpoint name (endpoints with none left out)."""

    def set_peer_load(self, load: Mapping[str, EndpointLoad]) -> None:
        """The other replicas' summed counts, replacing the last ones."""


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What one replica publishes: the director's counts by endpoint, and each load-sharing
    plugin's by plugin instance name (every replica runs the same config)."""

    endpoints: Mapping[str, EndpointLoad]
    plugins: Mapping[str, Mapping[str, EndpointLoad]] = field(default_factory=dict)


@runtime_checkable
class RouteLearner(Protocol):
    """A plugin whose state is learned from routing decisions (the approximate prefix index; a
    Responses API response's endpoint, one 64-bit key).
    It calls every `route_listeners` entry with each route it learns locally, and `learn` takes a
    route another replica made."""

    name: str
    route_listeners: list[RouteListener]

    def learn(self, endpoint: Endpoint, hashes: Sequence[int]) -> None: ...


@dataclass(frozen=True, slots=True)
class RouteMessage:
    """A routed request's prefix blocks, as one replica tells the others: which replica, which
    learner plugin (by instance name: every replica runs the same config), which endpoint."""

    replica: str
    plugin: str
    endpoint: str
    hashes: Sequence[int]

    def encode(self) -> bytes:
        hashes = array("Q", self.hashes)
        if sys.byteorder == "big":
            hashes.byteswap()
        header = "\n".join((self.replica, self.plugin, self.endpoint)).encode()
        return len(header).to_bytes(2, "little") + header + hashes.tobytes()

    @classmethod
    def decode(cls, data: bytes) -> RouteMessage:
        size = int.from_bytes(data[:2], "little")
        replica, plugin, endpoint = data[2 : 2 + size].decode().split("\n")
        hashes = array("Q")
        hashes.frombytes(data[2 + size :])
        if sys.byteorder == "big":
            hashes.byteswap()
        return cls(replica, plugin, endpoint, hashes)


class ReplicaState:
    """`replica_id`'s side of the shared state over its own datastore and plugins.

    Outgoing routes go to `on_route` (set by the transport). The endpoints' in-flight counts are
    the director's own plus what `apply_peer_load` last added, so every plugin reading
    `Endpoint.inflight_requests` sees the pool's total without changing; `local_load` subtracts
    the peers' part back out for publishing."""

    def __init__(self, replica_id: str, datastore: Datastore, plugins: Iterable[object]) -> None:
        self.replica_id = replica_id
        self.datastore = datastore
        plugins = list(plugins)
        self.learners = {p.name: p for p in plugins if isinstance(p, RouteLearner)}
        self.sharers = {p.name: p for p in plugins if isinstance(p, LoadSharer) and p.shares_load}
        self.on_route: Callable[[RouteMessage], None] | None = None
        self._peer_load: dict[Endpoint, EndpointLoad] = {}
        for learner in self.learners.values():
            learner.route_listeners.append(self._listener(learner.name))

    def _listener(self, plugin: str) -> RouteListener:
        def routed(endpoint: Endpoint, hashes: Sequence[int]) -> None:
            if self.on_route is not None:
                self.on_route(RouteMessage(self.replica_id, plugin, endpoint.name, hashes))

        return routed

    def apply_route(self, message: RouteMessage) -> bool:
        """Learn a peer's route; False when it names a plugin or endpoint this replica lacks."""
        learner = self.learners.get(message.plugin)
        endpoint = self.datastore.get(message.endpoint)
        if learner is None or endpoint is None or message.replica == self.replica_id:
            return False
        learner.learn(endpoint, message.hashes)
        return True

    def local_load(self) -> ReplicaLoad:
        """This replica's own in-flight load per endpoint (endpoints with none left out)."""
        load: dict[str, EndpointLoad] = {}
        peer = self._peer_load
        for endpoint in self.datastore.endpoints():
            requests, tokens = peer.get(endpoint, (0, 0))
            own = (endpoint.inflight_requests - requests, endpoint.inflight_tokens - tokens)
            if own != (0, 0):
                load[endpoint.name] = own
        return ReplicaLoad(load, {name: dict(s.own_load()) for name, s in self.sharers.items()})

    def apply_peer_load(self, peers: Iterable[ReplicaLoad]) -> None:
        """Replace the peers' part of every endpoint's in-flight counts, and of every load-sharing
        plugin's, with the sum of `peers` (each a peer's `local_load`); an empty iterable removes
        it (no peer, or no Redis)."""
        peers = list(peers)
        for name, sharer in self.sharers.items():
            sharer.set_peer_load(_summed(peer.plugins.get(name, {}) for peer in peers))
        totals = _summed(peer.endpoints for peer in peers)
        previous = self._peer_load
        current: dict[Endpoint, EndpointLoad] = {}
        for endpoint in self.datastore.endpoints():
            requests, tokens = totals.get(endpoint.name, (0, 0))
            old_requests, old_tokens = previous.get(endpoint, (0, 0))
            endpoint.inflight_requests += requests - old_requests
            endpoint.inflight_tokens += tokens - old_tokens
            if requests or tokens:
                current[endpoint] = (requests, tokens)
        self._peer_load = current

    def peer_load(self, endpoint: Endpoint) -> EndpointLoad:
        return self._peer_load.get(endpoint, (0, 0))


def _summed(loads: Iterable[Mapping[str, EndpointLoad]]) -> dict[str, EndpointLoad]:
    totals: dict[str, EndpointLoad] = {}
    for load in loads:
        for name, (requests, tokens) in load.items():
            old_requests, old_tokens = totals.get(name, (0, 0))
            totals[name] = (old_requests + requests, old_tokens + tokens)
    return totals
