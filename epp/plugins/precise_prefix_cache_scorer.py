"""`precise-prefix-cache-scorer` (deprecated in llm-d): `precise-prefix-cache-producer` and
`prefix-cache-scorer` in one plugin, with the producer's parameters. It scores the share of the
prompt's blocks each candidate holds from the first (llm-d's current wrapper; its v0.3 version
min-max normalised raw counts instead). Also a producer of `PrefixCacheMatchInfo`, so
`no-hit-lru-scorer` and P/D deciders can read what it found."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from epp.datalayer import BackgroundService, DataProducer, EndpointObserver
from epp.datalayer.kvblocks import KVIndexMetrics
from epp.datalayer.tokenize import TOKENIZED_PROMPT
from epp.datastore import Datastore, Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, register
from epp.kvevents import KVEvent
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.prefix.precise import PreciseParams, PrecisePrefixCache
from epp.scheduling.types import SchedulingResult

log = logging.getLogger(__name__)


@register
class PrecisePrefixCacheScorer(
    Plugin, Scorer, DataProducer, DataConsumer, EndpointObserver, BackgroundService
):
    type_name = "precise-prefix-cache-scorer"
    Params = PreciseParams
    produces = PREFIX_MATCH
    consumes = {TOKENIZED_PROMPT: ""}

    def __init__(self, name: str, params: PreciseParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        log.warning(
            "%s: precise-prefix-cache-scorer is deprecated; configure precise-prefix-cache-producer and "
            "prefix-cache-scorer (prefixMatchInfoProducerName) instead",
            name,
        )
        self.cache = PrecisePrefixCache(
            name, params, KVIndexMetrics.for_registry(context.metrics.registry), context.clock
        )

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        tokenized = self.consumed(request, TOKENIZED_PROMPT)
        request.attributes[self.name] = self.cache.match(request, tokenized, candidates)

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        match = request.attributes.get(self.name)
        if not isinstance(match, PrefixMatch) or not match.hashes:
            return [0.0] * len(candidates)
        total = match.total_blocks
        return [match.matched_blocks(e) / total for e in candidates]

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        self.cache.speculate(request.attributes.get(self.name), result)

    def apply_kv_events(self, pod: str, events: Iterable[KVEvent], model: str = "") -> None:
        self.cache.apply_kv_events(pod, events, model)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.cache.endpoint_removed(endpoint)

    async def start(self, datastore: Datastore) -> None:
        await self.cache.start(datastore)

    async def stop(self) -> None:
        await self.cache.stop()
