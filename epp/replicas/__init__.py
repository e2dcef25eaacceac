"""Active-active EPP replicas: what one replica shares with the others so N of them route as one.

`ReplicaState` (transport-free) is the replica's side: the prefix blocks it routes, taken from every
plugin that learns routes (`RouteLearner`, e.g. `approx-prefix-cache-producer`), and its own
per-endpoint in-flight load (the director's, and each `LoadSharer` plugin's, e.g.
`inflight-load-producer`); peers' routes are learned into the same indexes and peers' in-flight
load is added to the endpoints' and the plugins' counts. `RedisReplicaSync` carries both through
Redis (pub/sub for routes, per-replica keys with a TTL for load); the virtual-time engine carries
them itself."""

from epp.replicas.state import EndpointLoad, LoadSharer, ReplicaLoad, ReplicaState, RouteLearner, RouteMessage

__all__ = ["EndpointLoad", "LoadSharer", "ReplicaLoad", "ReplicaState", "RouteLearner", "RouteMessage"]
