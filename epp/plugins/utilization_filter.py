"""`utilization-filter` (llm-d): drop endpoints above any configured limit (a value equal to
`maxValue` passes); with `fallbackOnEmpty`, keep everyone rather than no one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import DataKey, Plugin, PluginContext, PluginParams, register
from epp.plugins.inflight_load_producer import InFlightLoadUser
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter

METRICS: dict[str, Callable[[Endpoint], float]] = {
    "running-requests": lambda e: e.metrics.running_requests_size,
    "waiting-queue": lambda e: e.metrics.waiting_queue_size,
    "kv-cache-utilization": lambda e: e.metrics.kv_cache_usage,
}
ACTIVE_REQUESTS = "active-requests"  # an inflight-load-producer's count, as llm-d's


class UtilizationCondition(PluginParams):
    metric: Literal["active-requests", "running-requests", "waiting-queue", "kv-cache-utilization"]
    max_value: float


class UtilizationFilterParams(PluginParams):
    conditions: list[UtilizationCondition] = Field(min_length=1)
    fallback_on_empty: bool = False
    # llm-d: the inflight-load-producer whose request count `active-requests` reads.
    in_flight_load_producer_name: str = ""


@register
class UtilizationFilter(Plugin, Filter, InFlightLoadUser):
    type_name = "utilization-filter"
    Params = UtilizationFilterParams

    @classmethod
    def consumed_keys(cls, params: UtilizationFilterParams) -> Mapping[DataKey, str]:
        """As llm-d: an in-flight load is needed only by an `active-requests` condition."""
        return cls.consumes if any(c.metric == ACTIVE_REQUESTS for c in params.conditions) else {}

    def __init__(self, name: str, params: UtilizationFilterParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.limits = [
            (self.in_flight_requests if c.metric == ACTIVE_REQUESTS else METRICS[c.metric], c.max_value)
            for c in params.conditions
        ]
        self.fallback_on_empty = params.fallback_on_empty

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        kept = [e for e in candidates if all(value(e) <= limit for value, limit in self.limits)]
        return candidates if not kept and self.fallback_on_empty else kept
