"""`concurrency-detector`: saturation as in-flight work over capacity. `concurrencyMode: requests`
(default) or `tokens` sums the in-flight requests or prompt tokens of the candidates over their
summed capacity; `hybrid` (llm-d router v0.10) averages, per endpoint, the larger of its request
and token ratios. Above 1.0 when overloaded, 1.0 with no candidates. Used in a profile it drops
endpoints at or over capacity x (1 + headroom), truncated to a whole number as llm-d does (hybrid:
either limit); unlike utilization-detector it may leave none. Requests and tokens are an
inflight-load-producer's (`inFlightLoadProducerName`, else the only or the default one), as llm-d's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from epp.datastore import Endpoint
from epp.flowcontrol import SaturationDetector
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.plugins.inflight_load_producer import InFlightLoadUser
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class ConcurrencyDetectorParams(PluginParams):
    concurrency_mode: Literal["requests", "tokens", "hybrid"] = "requests"
    max_concurrency: int = Field(default=100, gt=0)
    max_token_concurrency: int = Field(default=1_000_000, gt=0)
    headroom: float = Field(default=0.0, ge=0.0)
    in_flight_load_producer_name: str = ""


@register
class ConcurrencyDetector(Plugin, SaturationDetector, Filter, InFlightLoadUser):
    type_name = "concurrency-detector"
    Params = ConcurrencyDetectorParams

    def __init__(self, name: str, params: ConcurrencyDetectorParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.mode = params.concurrency_mode
        self.max_requests = params.max_concurrency
        self.max_tokens = params.max_token_concurrency
        self.request_limit = int(params.max_concurrency * (1.0 + params.headroom))
        self.token_limit = int(params.max_token_concurrency * (1.0 + params.headroom))

    def saturation(self, candidates: Sequence[Endpoint]) -> float:
        return self.saturation_with(candidates, 0, 0)

    def saturation_with(self, candidates: Sequence[Endpoint], requests: int, tokens: int) -> float:
        """`requests` and `tokens` not yet on an endpoint count as spread evenly over them."""
        if not candidates:
            return 1.0
        count = len(candidates)
        if self.mode == "hybrid":
            extra_requests, extra_tokens = requests / count, tokens / count
            ratios = [
                max(
                    (self.in_flight_requests(e) + extra_requests) / self.max_requests,
                    (self.in_flight_tokens(e) + extra_tokens) / self.max_tokens,
                )
                for e in candidates
            ]
            return sum(ratios) / count
        if self.mode == "tokens":
            return (sum(self.in_flight_tokens(e) for e in candidates) + tokens) / (self.max_tokens * count)
        return (sum(self.in_flight_requests(e) for e in candidates) + requests) / (self.max_requests * count)

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        return [e for e in candidates if self._admits(e)]

    def _admits(self, endpoint: Endpoint) -> bool:
        if self.mode == "tokens":
            return self.in_flight_tokens(endpoint) < self.token_limit
        below_requests = self.in_flight_requests(endpoint) < self.request_limit
        if self.mode == "hybrid":
            return below_requests and self.in_flight_tokens(endpoint) < self.token_limit
        return below_requests
