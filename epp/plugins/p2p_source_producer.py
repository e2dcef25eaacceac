"""`p2p-source-producer` (llm-d, alpha): names a peer the computing pod's routing sidecar can pull
the prompt's cached KV blocks from over the P2P connector (`x-kv-cache-source-host-port`),
instead of recomputing them.

Before scheduling it reads the prefix-cache producer's match (`prefixMatchInfoProducerName`;
default: the only or default one, created when none is configured) and samples a source among the
candidates caching within one block of the most prompt tokens, weighted by 1/(1 + waiting queue)
with a hash of the request id as the draw (so one widely cached prefix does not send every pull to
one replica). After scheduling the header is set only when that peer caches at least
`minCachedTokenDelta` (default 1) more tokens than the computing pod: the `prefillProfileName`
(default `prefill`) profile's pick if it made one, else the primary pick. The producers here
report no per-tier counts, so all of a peer's matched blocks count as pullable (llm-d counts only
CPU-tier blocks when the producer reports tiers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from epp.datalayer import DataProducer
from epp.datastore import Endpoint
from epp.framework import DataConsumer, DataKey, Plugin, PluginContext, PluginParams, register
from epp.headers import KV_CACHE_SOURCE_HEADER
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.types import PREFILL_PROFILE, SchedulingResult

P2P_SOURCE = DataKey("p2p-source", default_producer="p2p-source-producer")


class P2PSourceParams(PluginParams):
    prefix_match_info_producer_name: str = ""
    min_cached_token_delta: int = Field(default=1, ge=1)
    prefill_profile_name: str = ""


@dataclass(frozen=True, slots=True)
class PeerSource:
    hostport: str
    cached_tokens: int


def spread_fraction(request_id: str) -> float:
    """The request id's 32-bit FNV-1a hash mapped onto [0, 1), as llm-d samples sources."""
    value = 0x811C9DC5
    for byte in request_id.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value / 2**32


@register
class P2PSourceProducer(Plugin, DataProducer, DataConsumer, PreRequest):
    type_name = "p2p-source-producer"
    Params = P2PSourceParams
    produces = P2P_SOURCE
    consumes = {PREFIX_MATCH: "prefix_match_info_producer_name"}

    def __init__(self, name: str, params: P2PSourceParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.min_delta = params.min_cached_token_delta
        self.prefill_profile = params.prefill_profile_name or PREFILL_PROFILE

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        match = self.consumed(request, PREFIX_MATCH)
        if not isinstance(match, PrefixMatch):
            return
        cached = [(e, match.cached_tokens(e)) for e in candidates]
        most = max((tokens for _, tokens in cached), default=0)
        if most == 0:
            return
        band = [(e, tokens) for e, tokens in cached if tokens and tokens + match.block_size_tokens >= most]
        weights = [1.0 / (1.0 + e.metrics.waiting_queue_size) for e, _ in band]
        target = spread_fraction(request.request_id) * sum(weights)
        chosen = len(band) - 1
        for index, weight in enumerate(weights):
            if target < weight:
                chosen = index
                break
            target -= weight
        source, tokens = band[chosen]
        request.attributes[self.name] = PeerSource(source.hostport, tokens)

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        result.headers.pop(KV_CACHE_SOURCE_HEADER, None)
        peer = request.attributes.get(self.name)
        if not isinstance(peer, PeerSource):
            return
        prefill = result.profile_results.get(self.prefill_profile)
        computing = prefill.targets if prefill is not None and prefill.targets else result.targets
        if not computing or peer.hostport == computing[0].hostport:
            return
        match = self.consumed(request, PREFIX_MATCH)
        local = match.cached_tokens(computing[0]) if isinstance(match, PrefixMatch) else 0
        if peer.cached_tokens - local >= self.min_delta:
            result.headers[KV_CACHE_SOURCE_HEADER] = peer.hostport
