"""`kv-cache-utilization-scorer`: 1 - KV-cache utilisation (more free cache scores higher)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.scoring import complement_column


@register
class KvCacheUtilizationScorer(Plugin, Scorer):
    type_name = "kv-cache-utilization-scorer"
    aliases = ("kv-cache-scorer",)  # llm-d v0.3

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return [1.0 - e.metrics.kv_cache_usage for e in candidates]

    def score_array(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> np.ndarray:
        return complement_column(candidates, "kv_cache_usage")
