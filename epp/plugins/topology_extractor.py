"""`topology-extractor` (llm-d): where each endpoint sits, from its pod labels.

Parameters name the labels (defaults as llm-d's): `hostname` (`kubernetes.io/hostname`), `rack`
(`topology.kubernetes.io/rack`), `zone` (`topology.kubernetes.io/zone`), `region`
(`topology.kubernetes.io/region`). An endpoint with none of them has no topology. llm-d also
falls back to the pod's `spec.hostname` for the host; this EPP's endpoints carry labels only, so
label the pods (or list `labels` in the endpoints file). The topology plugins read it through this
producer (`topologyProducerName`); one with default labels is added when they need it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from epp.datalayer import DataProducer
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.topology import TOPOLOGY, Topology


class TopologyExtractorParams(PluginParams):
    hostname: str = "kubernetes.io/hostname"
    rack: str = "topology.kubernetes.io/rack"
    zone: str = "topology.kubernetes.io/zone"
    region: str = "topology.kubernetes.io/region"


@register
class TopologyExtractor(Plugin, DataProducer):
    type_name = "topology-extractor"
    Params = TopologyExtractorParams
    produces = TOPOLOGY

    def __init__(self, name: str, params: TopologyExtractorParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        defaults = TopologyExtractorParams()
        self.labels = (  # an empty label name means the default, as llm-d's
            params.hostname or defaults.hostname,
            params.rack or defaults.rack,
            params.zone or defaults.zone,
            params.region or defaults.region,
        )

    def topology(self, endpoint: Endpoint) -> Topology | None:
        labels = endpoint.spec.labels
        values = [labels.get(key, "") for key in self.labels]
        return Topology(*values) if any(values) else None

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        lookup: Callable[[Endpoint], Topology | None] = self.topology
        request.attributes[self.name] = lookup
