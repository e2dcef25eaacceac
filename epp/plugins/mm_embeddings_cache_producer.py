"""`mm-embeddings-cache-producer` (llm-d router): which candidates probably still hold a request's
multimodal items encoded (vLLM's encoder cache), so `mm-embeddings-cache-scorer` can send an image
back to the replica that already ran it through the vision encoder.

The items are the unique content hashes of the prompt's multimodal features, from `token-producer`
(vLLM's render API reports them; the estimate backend hashes a chat's media blocks). Each endpoint
has an LRU of the hashes routed to it: in PreRequest the primary profile's targets record the
request's items. Its capacity is `cacheSizeInMBPerServer` (4096 MiB when unset or <= 0) / 2 MiB,
llm-d's fixed size per item (2,048 items by default), so it approximates the model servers'
encoder cache size. A lookup does not refresh recency. An endpoint leaving the pool loses its LRU.
Metrics: `llm_d_epp_encoder_cache_{queries_total, hits_total, hit_ratio}`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from pydantic import Field

from epp.datalayer import DataProducer, EndpointObserver
from epp.datalayer.tokenize import TOKENIZED_PROMPT, TokenizedPrompt
from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, PluginParams, register
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.encoder_cache import (
    ENCODER_CACHE_MATCH,
    EncoderCacheMatch,
    EncoderCacheMetrics,
    MatchItem,
)
from epp.scheduling.types import SchedulingResult

DEFAULT_CACHE_MB = 4096
MB_PER_ITEM = 2


class MMEmbeddingsCacheParams(PluginParams):
    cache_size_in_mb_per_server: int = Field(default=0, alias="cacheSizeInMBPerServer")

    def capacity(self) -> int:
        """Items remembered per endpoint."""
        mb = self.cache_size_in_mb_per_server if self.cache_size_in_mb_per_server > 0 else DEFAULT_CACHE_MB
        return max(1, mb // MB_PER_ITEM)


@register
class MMEmbeddingsCacheProducer(Plugin, DataProducer, DataConsumer, PreRequest, EndpointObserver):
    type_name = "mm-embeddings-cache-producer"
    Params = MMEmbeddingsCacheParams
    produces = ENCODER_CACHE_MATCH
    consumes = {TOKENIZED_PROMPT: ""}

    def __init__(self, name: str, params: MMEmbeddingsCacheParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.capacity = params.capacity()
        self.caches: dict[str, OrderedDict[str, None]] = {}  # endpoint name -> item hashes, LRU first
        self.metrics = EncoderCacheMetrics.for_registry(context.metrics.registry)

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        items = self._items(request)
        if not items:
            request.attributes.pop(self.name, None)
            return
        self._count_lookups(items)
        matched: dict[Endpoint, tuple[MatchItem, ...]] = {}
        observe = self.metrics.hit_ratio.labels(self.type_name, self.name).observe
        for endpoint in candidates:
            cache = self.caches.get(endpoint.name)
            held = tuple(item for item in items if cache is not None and item.hash in cache)
            observe(len(held) / len(items))
            if held:
                matched[endpoint] = held
        request.attributes[self.name] = EncoderCacheMatch(items, matched)

    def _items(self, request: InferenceRequest) -> tuple[MatchItem, ...]:
        """The prompt's multimodal items, each content hash once."""
        tokenized = self.consumed(request, TOKENIZED_PROMPT)
        if not isinstance(tokenized, TokenizedPrompt):
            return ()
        unique = {f.hash: MatchItem(f.hash, f.modality) for f in tokenized.mm_features if f.hash}
        return tuple(unique.values())

    def _count_lookups(self, items: Sequence[MatchItem]) -> None:
        for item in items:
            self.metrics.queries.labels(self.type_name, self.name, item.modality).inc()
            for pod, cache in self.caches.items():
                if item.hash in cache:
                    self.metrics.hits.labels(self.type_name, self.name, pod, item.modality).inc()

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        match = request.attributes.get(self.name)
        if not isinstance(match, EncoderCacheMatch):
            return
        for endpoint in result.targets:
            cache = self.caches.setdefault(endpoint.name, OrderedDict())
            for item in match.items:
                cache[item.hash] = None
                cache.move_to_end(item.hash)
            while len(cache) > self.capacity:
                cache.popitem(last=False)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.caches.pop(endpoint.name, None)
