"""`utilization-detector`: saturation from queue depth and KV-cache use.

Saturation is the mean over candidates of max(queue / queueDepthThreshold, kv /
kvCacheUtilThreshold), an endpoint with stale or no metrics counting as fully saturated (1.0), no
candidates as 1.0. Each reading sets `llm_d_epp_flow_control_stale_endpoints{detector}` to the
number of candidates it counted full for lack of fresh metrics (llm-d's gauge: a dispatch stall
with it above zero is a metrics collection problem, not overload). Used in a profile it filters
out stale endpoints and those at or over the thresholds (times 1 + headroom), keeping everyone if
that would leave no one."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Gauge
from pydantic import Field

from epp.datastore import Endpoint
from epp.flowcontrol import SaturationDetector
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.params.values import Duration
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class UtilizationDetectorParams(PluginParams):
    queue_depth_threshold: int = Field(default=5, gt=0)
    kv_cache_util_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    metrics_staleness_threshold: Duration = 0.2
    headroom: float = Field(default=0.0, ge=0.0)


@register
class UtilizationDetector(Plugin, SaturationDetector, Filter):
    type_name = "utilization-detector"
    Params = UtilizationDetectorParams

    def __init__(self, name: str, params: UtilizationDetectorParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.queue_limit = params.queue_depth_threshold
        self.kv_limit = params.kv_cache_util_threshold
        self.staleness = params.metrics_staleness_threshold
        self.headroom = params.headroom
        self._clock = context.clock
        self._stale_gauge = context.metrics.flow_control.stale_endpoints
        self._stale_series: Gauge | None = None  # made at the first reading, as llm-d's

    def _stale(self, count: int) -> None:
        series = self._stale_series
        if series is None:
            series = self._stale_series = self._stale_gauge.labels(self.name)
        series.set(count)

    def saturation(self, candidates: Sequence[Endpoint]) -> float:
        stale: list[Endpoint] = []
        value = self._mean(candidates, stale)
        self._stale(len(stale))
        return value

    def stage_saturations(
        self, stages: Sequence[Sequence[Endpoint]], requests: int, tokens: int
    ) -> list[float]:
        """The stages read as one reading: the gauge counts the stale endpoints of them all (a P/D
        pool's stale prefill half holds dispatch though the decode half, read after it, has none),
        an endpoint of both stages once."""
        stale: list[Endpoint] = []
        values = [self._mean(stage, stale) for stage in stages]
        self._stale(len(set(stale)))
        return values

    def _mean(self, candidates: Sequence[Endpoint], stale: list[Endpoint]) -> float:
        """The candidates' saturation; those it counts full for lack of fresh metrics are added to
        `stale` (none for an empty pool: its stall is not a metrics collection problem)."""
        if not candidates:
            return 1.0
        # Read twice per request with flow control on (before the queue and at dispatch), over the
        # whole pool: EndpointMetrics.age and max() inlined, the arithmetic unchanged.
        now, staleness = self._clock(), self.staleness
        queue_limit, kv_limit = self.queue_limit, self.kv_limit
        total = 0.0
        for endpoint in candidates:
            metrics = endpoint.metrics
            updated = metrics.update_time
            if updated == 0.0 or now - updated > staleness:  # never scraped, or stale
                total += 1.0
                stale.append(endpoint)
                continue
            queue, kv = metrics.waiting_queue_size / queue_limit, metrics.kv_cache_usage / kv_limit
            total += kv if kv > queue else queue  # max(queue, kv), NaN included
        return total / len(candidates)

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        now = self._clock()
        scale = 1.0 + self.headroom
        queue_limit, kv_limit = self.queue_limit * scale, self.kv_limit * scale
        kept = [
            e
            for e in candidates
            if e.metrics.age(now) <= self.staleness
            and e.metrics.waiting_queue_size < queue_limit
            and e.metrics.kv_cache_usage < kv_limit
        ]
        return kept or candidates
