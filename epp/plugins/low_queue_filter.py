"""`low-queue-filter` (GIE v0.4-v0.5): keep the endpoints whose waiting queue is at most
`threshold` (default 128, GIE's QUEUING_THRESHOLD_LORA)."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class LowQueueParams(PluginParams):
    threshold: int = 128


@register
class LowQueueFilter(Plugin, Filter):
    type_name = "low-queue-filter"
    Params = LowQueueParams

    def __init__(self, name: str, params: LowQueueParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.threshold = params.threshold

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        return [e for e in candidates if e.metrics.waiting_queue_size <= self.threshold]
