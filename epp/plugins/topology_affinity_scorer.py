"""`topology-affinity-scorer` (llm-d): score candidates by closeness to the endpoint already chosen
for the request's other P/D leg (`peer-endpoint`): same host 1.0, rack 0.2, zone 0.05, region 0.02,
otherwise (or without topology on either side) 0 — KV-cache transfer over NVLink beats the
network."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.disagg import PEER_ENDPOINT
from epp.scheduling.framework import Scorer
from epp.scheduling.topology import TOPOLOGY, Level, compare

LEVEL_SCORES = {Level.HOST: 1.0, Level.RACK: 0.2, Level.ZONE: 0.05, Level.REGION: 0.02, Level.NONE: 0.0}


class TopologyScorerParams(PluginParams):
    topology_producer_name: str = ""


@register
class TopologyAffinityScorer(Plugin, Scorer, DataConsumer):
    type_name = "topology-affinity-scorer"
    Params = TopologyScorerParams
    consumes = {TOPOLOGY: "topology_producer_name"}

    def __init__(self, name: str, params: TopologyScorerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        topology = self.consumed(request, TOPOLOGY)
        peer = request.attributes.get(PEER_ENDPOINT)
        if not callable(topology) or not isinstance(peer, Endpoint):
            return [0.0] * len(candidates)
        where = topology(peer)
        return [LEVEL_SCORES[compare(where, topology(e))] for e in candidates]
