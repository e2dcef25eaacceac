"""`least-kv-cache-filter` (GIE v0.4-v0.5): keep the endpoints whose KV-cache use is in the lowest
band of the candidates': min <= kv <= min + (max - min) / candidates. Equal use keeps everyone."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


@register
class LeastKVCacheFilter(Plugin, Filter):
    type_name = "least-kv-cache-filter"

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        if not candidates:
            return []
        usage = [e.metrics.kv_cache_usage for e in candidates]
        low, high = min(usage), max(usage)
        limit = low + (high - low) / len(candidates)
        return [e for e, kv in zip(candidates, usage, strict=True) if low <= kv <= limit]
