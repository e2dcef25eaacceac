"""`mm-embeddings-cache-scorer` (llm-d router): the share of a request's multimodal items (by
size; every item weighs 1) that `mm-embeddings-cache-producer` expects each candidate to hold in
its encoder cache. 0 everywhere for a request without multimodal items. `producerName` names the
producer when several are configured."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.encoder_cache import ENCODER_CACHE_MATCH, EncoderCacheMatch
from epp.scheduling.framework import Scorer


class MMEmbeddingsCacheScorerParams(PluginParams):
    producer_name: str = ""


@register
class MMEmbeddingsCacheScorer(Plugin, Scorer, DataConsumer):
    type_name = "mm-embeddings-cache-scorer"
    Params = MMEmbeddingsCacheScorerParams
    consumes = {ENCODER_CACHE_MATCH: "producer_name"}

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        match = self.consumed(request, ENCODER_CACHE_MATCH)
        if not isinstance(match, EncoderCacheMatch):
            return [0.0] * len(candidates)
        return [match.score(e) for e in candidates]
