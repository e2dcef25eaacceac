"""`concurrency-detector`: saturation as in-flight work over capacity, summed over candidates
(requests, or prompt tokens with `concurrencyMode: tokens`); above 1.0 when overloaded, 1.0 with
no candidates. Used in a profile it drops endpoints at or over capacity x (1 + headroom); unlike
utilization-detector it may leave none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from epp.datastore import Endpoint
from epp.flowcontrol import SaturationDetector
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class ConcurrencyDetectorParams(PluginParams):
    concurrency_mode: Literal["requests", "tokens"] = "requests"
    max_concurrency: int = Field(default=100, gt=0)
    max_token_concurrency: int = Field(default=1_000_000, gt=0)
    headroom: float = Field(default=0.0, ge=0.0)


@register
class ConcurrencyDetector(Plugin, SaturationDetector, Filter):
    type_name = "concurrency-detector"
    Params = ConcurrencyDetectorParams

    def __init__(self, name: str, params: ConcurrencyDetectorParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.count_tokens = params.concurrency_mode == "tokens"
        self.capacity = params.max_token_concurrency if self.count_tokens else params.max_concurrency
        self.headroom = params.headroom

    def in_flight(self, endpoint: Endpoint) -> int:
        return endpoint.inflight_tokens if self.count_tokens else endpoint.inflight_requests

    def saturation(self, candidates: Sequence[Endpoint]) -> float:
        return self.saturation_with(candidates, 0, 0)

    def saturation_with(self, candidates: Sequence[Endpoint], requests: int, tokens: int) -> float:
        if not candidates:
            return 1.0
        in_flight = sum(self.in_flight(e) for e in candidates) + (tokens if self.count_tokens else requests)
        return in_flight / (self.capacity * len(candidates))

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        limit = self.capacity * (1.0 + self.headroom)
        return [e for e in candidates if self.in_flight(e) < limit]
