"""`precise-prefix-cache-producer`: llm-d's precise prefix cache. Per request, how many of the
prompt's leading KV blocks each candidate actually holds, from an index the engines' own KV events
keep (`epp.scheduling.prefix.precise`); `prefix-cache-scorer` reads it through
`prefixMatchInfoProducerName`. The prompt's token ids come from `token-producer`.

`approximateFallback` (ours, not llm-d's) keeps an approximate prefix index beside it, learned from
this EPP's own picks, for the endpoints the events say nothing about: a pool where some engines
publish no KV events, or none do, still routes by prefix instead of by load alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import Field

from epp.datalayer import AsyncDataProducer, BackgroundService, DataProducer, EndpointObserver
from epp.datalayer.kvblocks import KVIndexMetrics
from epp.datalayer.tokenize import TOKENIZED_PROMPT
from epp.datastore import Datastore, Endpoint
from epp.datastore.columns import positions
from epp.framework import DataConsumer, Plugin, PluginContext, register
from epp.kvevents import KVEvent
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.requestcontrol import PreRequest, ResponseComplete
from epp.requests import InferenceRequest, Usage
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.prefix.params import PrefixIndexParams
from epp.scheduling.prefix.precise import Pinned, PreciseParams, PrecisePrefixCache
from epp.scheduling.types import SchedulingResult


class PreciseProducerParams(PreciseParams):
    approximate_fallback: bool = Field(
        default=False,
        description="ours: endpoints holding no blocks by their KV events get the approximate index's match",
    )


@register
class PrecisePrefixCacheProducer(
    Plugin,
    DataProducer,
    AsyncDataProducer,
    DataConsumer,
    PreRequest,
    ResponseComplete,
    EndpointObserver,
    BackgroundService,
):
    type_name = "precise-prefix-cache-producer"
    Params = PreciseProducerParams
    produces = PREFIX_MATCH
    consumes = {TOKENIZED_PROMPT: ""}

    def __init__(self, name: str, params: PreciseProducerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        registry = context.metrics.registry
        self.cache = PrecisePrefixCache(
            name, params, KVIndexMetrics.for_registry(registry), context.clock, registry
        )
        self.fallback = (
            ApproxPrefixCacheProducer(f"{name}-approximate", PrefixIndexParams(), context)
            if params.approximate_fallback
            else None
        )
        self.pinned_attribute = f"{name}.pinned"  # the request attribute holding what it pinned

    async def prepare_async(self, request: InferenceRequest) -> None:
        """With the Redis index (`redisConfig`), its lookup; nothing for the in-memory one."""
        await self.cache.lookup(request, self.consumed(request, TOKENIZED_PROMPT))

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        tokenized = self.consumed(request, TOKENIZED_PROMPT)
        match = self.cache.match(request, tokenized, candidates)
        if self.fallback is not None:
            self.fallback.prepare(request, candidates)
            approximate = request.attributes[self.fallback.name]
            assert isinstance(approximate, PrefixMatch)
            match = self.with_fallback(match, approximate, candidates)
        request.attributes[self.name] = match

    def with_fallback(
        self, match: PrefixMatch, approximate: PrefixMatch, candidates: Sequence[Endpoint]
    ) -> PrefixMatch:
        """Candidates of which the index holds no block (their engines published nothing, or
        nothing yet) get the approximate index's share of the prompt, in this match's blocks. A
        prompt without token ids (a tokenization fallback, a salted prompt) is matched
        approximately for every candidate."""
        if not match.hashes:
            return approximate
        if not approximate.matched:
            return match
        # membership tests for the few approximately matched endpoints, not sets of a thousand
        index, considered = self.cache.index, positions(candidates)
        matched = dict(match.matched)
        total, approximate_total = match.total_blocks, approximate.total_blocks
        for endpoint, blocks in approximate.matched.items():
            if endpoint in considered and not index.publishes(endpoint.hostport):
                matched[endpoint] = blocks * total // approximate_total
        return PrefixMatch(match.hashes, matched, match.block_size_tokens)

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        match = request.attributes.get(self.name)
        if self.fallback is not None:
            self.fallback.pre_request(request, result)
            if match is request.attributes.get(self.fallback.name):
                return  # approximate keys: nothing the KV events could confirm
        pinned = self.cache.speculate(match, result)
        if pinned is not None:
            request.attributes[self.pinned_attribute] = pinned

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        pinned = request.attributes.pop(self.pinned_attribute, None)
        if isinstance(pinned, Pinned):
            self.cache.release(pinned)

    def apply_kv_events(self, pod: str, events: Iterable[KVEvent], model: str = "") -> None:
        """Events of one engine, straight from the virtual-time benchmark (no ZMQ)."""
        self.cache.apply_kv_events(pod, events, model)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.cache.endpoint_removed(endpoint)
        if self.fallback is not None:
            self.fallback.endpoint_removed(endpoint)

    async def start(self, datastore: Datastore) -> None:
        await self.cache.start(datastore)

    async def stop(self) -> None:
        await self.cache.stop()
