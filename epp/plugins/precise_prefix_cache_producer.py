"""`precise-prefix-cache-producer`: llm-d's precise prefix cache. Per request, how many of the
prompt's leading KV blocks each candidate actually holds, from an index the engines' own KV events
keep (`epp.scheduling.prefix.precise`); `prefix-cache-scorer` reads it through
`prefixMatchInfoProducerName`. The prompt's token ids come from `token-producer`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from epp.datalayer import BackgroundService, DataProducer, EndpointObserver
from epp.datalayer.kvblocks import KVIndexMetrics
from epp.datalayer.tokenize import TOKENIZED_PROMPT
from epp.datastore import Datastore, Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, register
from epp.kvevents import KVEvent
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.prefix import PREFIX_MATCH
from epp.scheduling.prefix.precise import PreciseParams, PrecisePrefixCache
from epp.scheduling.types import SchedulingResult


@register
class PrecisePrefixCacheProducer(
    Plugin, DataProducer, DataConsumer, PreRequest, EndpointObserver, BackgroundService
):
    type_name = "precise-prefix-cache-producer"
    Params = PreciseParams
    produces = PREFIX_MATCH
    consumes = {TOKENIZED_PROMPT: ""}

    def __init__(self, name: str, params: PreciseParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.cache = PrecisePrefixCache(
            name, params, KVIndexMetrics.for_registry(context.metrics.registry), context.clock
        )

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        tokenized = self.consumed(request, TOKENIZED_PROMPT)
        request.attributes[self.name] = self.cache.match(request, tokenized, candidates)

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        self.cache.speculate(request.attributes.get(self.name), result)

    def apply_kv_events(self, pod: str, events: Iterable[KVEvent], model: str = "") -> None:
        """Events of one engine, straight from the virtual-time benchmark (no ZMQ)."""
        self.cache.apply_kv_events(pod, events, model)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.cache.endpoint_removed(endpoint)

    async def start(self, datastore: Datastore) -> None:
        await self.cache.start(datastore)

    async def stop(self) -> None:
        await self.cache.stop()
