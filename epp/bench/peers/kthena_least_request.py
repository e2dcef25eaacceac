"""`kthena-least-request`: Kthena router's `least-request` plugin (volcano-sh/kthena v1.0), which is
both a filter and a scorer, re-implemented so the benchmark can run Kthena's policy inside this
EPP (see docs/benchmarks.md).

- Filter: keep endpoints with fewer than `maxWaitingRequests` (10) waiting requests. Kthena fails
  the request when none is left; so does a profile here (429).
- Score: base = running + 100 x waiting (the engine's scraped gauges); score = (max - base) / max
  over the candidates, truncated to whole percent as Kthena's integer scores are; 1 when max is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter, Scorer

WAITING_WEIGHT = 100  # Kthena's "magic number": any waiting request outweighs many running ones


class KthenaLeastRequestParams(PluginParams):
    max_waiting_requests: int = Field(default=10, ge=0)


@register
class KthenaLeastRequest(Plugin, Filter, Scorer):
    type_name = "kthena-least-request"
    Params = KthenaLeastRequestParams

    def __init__(self, name: str, params: KthenaLeastRequestParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.max_waiting = params.max_waiting_requests

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        return [e for e in candidates if e.metrics.waiting_queue_size < self.max_waiting]

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        bases = [
            e.metrics.running_requests_size + WAITING_WEIGHT * e.metrics.waiting_queue_size
            for e in candidates
        ]
        highest = max(bases, default=0)
        if highest <= 0:
            return [1.0] * len(candidates)
        return [int((highest - base) / highest * 100) / 100 for base in bases]
