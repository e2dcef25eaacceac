"""Multimodal encoder-cache match data (llm-d's `EncoderCacheMatchInfo`): which of a request's
multimodal items (images, videos, audio, by content hash) each candidate probably still holds
encoded. Produced by `mm-embeddings-cache-producer`, scored by `mm-embeddings-cache-scorer`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from epp.datastore import Endpoint
from epp.framework import DataKey
from epp.metrics.per_registry import PerRegistry

ENCODER_CACHE_MATCH = DataKey(
    "MultiModalEncoderCacheMatchInfoKey", default_producer="mm-embeddings-cache-producer"
)


@dataclass(frozen=True, slots=True)
class MatchItem:
    hash: str
    modality: str
    size: int = 1  # every item weighs 1 (llm-d's unweighted producer)


@dataclass(frozen=True, slots=True)
class EncoderCacheMatch:
    items: tuple[MatchItem, ...]  # the request's unique items
    matched: Mapping[Endpoint, tuple[MatchItem, ...]]  # per endpoint, the items it holds; absent = none

    def score(self, endpoint: Endpoint) -> float:
        """Matched item size / the request's item size, 0 when the request has none."""
        total = sum(item.size for item in self.items)
        if total <= 0:
            return 0.0
        return sum(item.size for item in self.matched.get(endpoint, ())) / total


class EncoderCacheMetrics(PerRegistry):
    """llm-d's `llm_d_epp_encoder_cache_*` metrics, one set per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "llm_d_epp_encoder_cache_"
        labels = ["plugin_type", "plugin_name"]
        self.queries = Counter(
            p + "queries_total",
            "multimodal item hash lookups against the encoder-cache affinity LRU",
            [*labels, "modality"],
            registry=registry,
        )
        self.hits = Counter(
            p + "hits_total",
            "multimodal item hash lookups that found the item in an endpoint's LRU, by endpoint",
            [*labels, "pod", "modality"],
            registry=registry,
        )
        self.hit_ratio = Histogram(
            p + "hit_ratio",
            "matched multimodal items over the request's items, per endpoint and lookup",
            labels,
            buckets=[i / 10 for i in range(11)],
            registry=registry,
        )
