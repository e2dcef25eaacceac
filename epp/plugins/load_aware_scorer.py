"""`load-aware-scorer` (llm-d): an empty queue scores 0.5, longer queues less, down to 0 at
`threshold` waiting requests. The ceiling of 0.5 is llm-d's design, not a typo."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer

DEFAULT_THRESHOLD = 128


class LoadAwareParams(PluginParams):
    threshold: int = DEFAULT_THRESHOLD


@register
class LoadAwareScorer(Plugin, Scorer):
    type_name = "load-aware-scorer"
    Params = LoadAwareParams

    def __init__(self, name: str, params: LoadAwareParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.threshold = params.threshold if params.threshold > 0 else DEFAULT_THRESHOLD

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        threshold = self.threshold
        return [0.5 * (1.0 - min(e.metrics.waiting_queue_size, threshold) / threshold) for e in candidates]
