"""`probabilistic-admitter` (llm-d): sheds sheddable requests (objective priority < 0) with a
probability that rises steeply with the pool's saturation, instead of all at once at a threshold.

As llm-d's: per candidate, load = max(waiting queue / `queueDepthThreshold`, KV-cache use /
`kvCacheUtilThreshold`); saturation = mean load over the candidates; a sheddable request is
refused (429, `probabilistic-admitter: rejected, saturation=… prob=…`) with probability
min(saturation^`power` x `k`, 1). Requests with priority >= 0, and requests with no candidates,
are always admitted. With the defaults (5, 0.8, power 5, k 300) shedding is certain from a
saturation of (1/300)^(1/5) = 0.32 and rare below about 0.15."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requestcontrol import AdmitRequest
from epp.requests import ErrorCode, InferenceRequest, RequestError


class ProbabilisticAdmitterParams(PluginParams):
    queue_depth_threshold: int = Field(default=5, gt=0)
    kv_cache_util_threshold: float = Field(default=0.8, gt=0.0)
    power: float = Field(default=5.0, gt=0.0)
    k: float = Field(default=300.0, gt=0.0)


@register
class ProbabilisticAdmitter(Plugin, AdmitRequest):
    type_name = "probabilistic-admitter"
    Params = ProbabilisticAdmitterParams

    def __init__(self, name: str, params: ProbabilisticAdmitterParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self._rng = context.rng

    def saturation(self, candidates: Sequence[Endpoint]) -> float:
        p = self.params
        loads = (
            max(
                e.metrics.waiting_queue_size / p.queue_depth_threshold,
                e.metrics.kv_cache_usage / p.kv_cache_util_threshold,
            )
            for e in candidates
        )
        return sum(loads) / len(candidates)

    def admit_request(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        if request.priority >= 0 or not candidates:
            return
        saturation = self.saturation(candidates)
        probability = min(saturation**self.params.power * self.params.k, 1.0)
        if self._rng.random() < probability:
            raise RequestError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"{self.type_name}: rejected, saturation={saturation:.3f} prob={probability:.2f}",
            )
