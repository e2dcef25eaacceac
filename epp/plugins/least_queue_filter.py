"""`least-queue-filter` (GIE v0.4-v0.5): keep the endpoints whose waiting queue is in the lowest
band of the candidates': min <= queue <= min + (max - min) // candidates (integer division, as
GIE's). Equal queues keep everyone. Its successors are `queue-scorer` and the decision tree's
filters compose it (`decision-tree-filter`)."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


@register
class LeastQueueFilter(Plugin, Filter):
    type_name = "least-queue-filter"

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        if not candidates:
            return []
        queues = [e.metrics.waiting_queue_size for e in candidates]
        low, high = min(queues), max(queues)
        limit = low + (high - low) // len(candidates)
        return [e for e, q in zip(candidates, queues, strict=True) if low <= q <= limit]
