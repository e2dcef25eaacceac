"""`lora-affinity-scorer`: prefer endpoints that already run the requested adapter, then those with
a free adapter slot, then those where it is queued to load."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer

ACTIVE = 1.0
FREE_SLOT = 0.8
WAITING = 0.6


@register
class LoraAffinityScorer(Plugin, Scorer):
    type_name = "lora-affinity-scorer"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        model = request.target_model
        return [_affinity(e, model) for e in candidates]


def _affinity(endpoint: Endpoint, model: str) -> float:
    metrics = endpoint.metrics
    if model in metrics.active_models:
        return ACTIVE
    if len(metrics.active_models) + len(metrics.waiting_models) < metrics.max_active_models:
        return FREE_SLOT
    if model in metrics.waiting_models:
        return WAITING
    return 0.0
