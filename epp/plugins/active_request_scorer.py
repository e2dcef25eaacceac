"""`active-request-scorer` (llm-d): idle endpoints (at most `idleThreshold` requests in flight)
score 1.0; busier ones (max - count) / max * `maxBusyScore`, max taken over the candidates."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from epp.datalayer.inflight import INFLIGHT_LOAD, RequestLoad
from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, PluginParams, register
from epp.params.values import Duration
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer


class ActiveRequestParams(PluginParams):
    idle_threshold: int = Field(default=0, ge=0)
    max_busy_score: float = Field(default=1.0, ge=0.0, le=1.0)
    in_flight_load_producer_name: str = ""
    request_timeout: Duration | None = Field(default=None, description="llm-d <= v0.6; accepted, unused")


@register
class ActiveRequestScorer(Plugin, Scorer, DataConsumer):
    type_name = "active-request-scorer"
    Params = ActiveRequestParams
    consumes = {INFLIGHT_LOAD: "in_flight_load_producer_name"}

    def __init__(self, name: str, params: ActiveRequestParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.idle_threshold = params.idle_threshold
        self.max_busy_score = params.max_busy_score

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        load = self.consumed(request, INFLIGHT_LOAD)
        if not isinstance(load, RequestLoad):
            return [0.0] * len(candidates)
        counts = [load.requests(e) for e in candidates]
        busiest = max(counts)
        idle, busy_scale = self.idle_threshold, self.max_busy_score
        return [1.0 if c <= idle else (busiest - c) / busiest * busy_scale for c in counts]
