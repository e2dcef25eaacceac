"""`lora-affinity-filter` (GIE v0.4-v0.5): prefer endpoints that already have the request's LoRA
adapter (its target model) loaded or loading; else endpoints with room for one more adapter.

As GIE's: affinity = endpoints listing the model among their active or waiting adapters;
available = the others whose active + waiting adapters are fewer than their maximum. With both
sets non-empty, keep affinity with probability `threshold` (default 0.999, GIE's
LORA_AFFINITY_THRESHOLD) and available otherwise; with one non-empty, keep it; with neither, keep
none. An endpoint whose adapter limit is unknown (0) is never "available"."""

from __future__ import annotations

from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class LoraAffinityFilterParams(PluginParams):
    threshold: float = Field(default=0.999)


@register
class LoraAffinityFilter(Plugin, Filter):
    type_name = "lora-affinity-filter"
    Params = LoraAffinityFilterParams

    def __init__(self, name: str, params: LoraAffinityFilterParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.threshold = params.threshold
        self._rng = context.rng

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        model = request.target_model
        affinity: list[Endpoint] = []
        available: list[Endpoint] = []
        for e in candidates:
            m = e.metrics
            if model in m.active_models or model in m.waiting_models:
                affinity.append(e)
            elif len(m.active_models) + len(m.waiting_models) < m.max_active_models:
                available.append(e)
        if affinity and available:
            return affinity if self._rng.random() < self.threshold else available
        return affinity or available
