"""`topology-affinity-filter` (llm-d): keep the candidates close enough to the endpoint already
chosen for the request's other P/D leg (the `peer-endpoint` the disagg handler publishes: the
decode pick when the prefill profile runs, decode-first).

As llm-d's: with no peer or no peer topology, keep all; else keep the candidates whose closeness
to the peer is at least `minAffinity` (`host` (default) | `rack` | `zone` | `region`; candidates
without topology are dropped); if none is close enough, keep all."""

from __future__ import annotations

from typing import Literal

from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.disagg import PEER_ENDPOINT
from epp.scheduling.framework import Filter
from epp.scheduling.topology import TOPOLOGY, Level, compare


class TopologyFilterParams(PluginParams):
    min_affinity: Literal["host", "rack", "zone", "region"] = "host"
    topology_producer_name: str = ""


@register
class TopologyAffinityFilter(Plugin, Filter, DataConsumer):
    type_name = "topology-affinity-filter"
    Params = TopologyFilterParams
    consumes = {TOPOLOGY: "topology_producer_name"}

    def __init__(self, name: str, params: TopologyFilterParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.min_affinity = Level[params.min_affinity.upper()]

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        topology = self.consumed(request, TOPOLOGY)
        peer = request.attributes.get(PEER_ENDPOINT)
        if not callable(topology) or not isinstance(peer, Endpoint):
            return candidates
        where = topology(peer)
        if where is None:
            return candidates
        kept = [
            e for e in candidates if (t := topology(e)) is not None and compare(where, t) <= self.min_affinity
        ]
        return kept or candidates
