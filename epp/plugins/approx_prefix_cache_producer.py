"""`approx-prefix-cache-producer`: estimates, per candidate, how much of the prompt is already in
its KV cache, from what this EPP sent where. The index learns in PreRequest, before the request is
forwarded, so a burst of requests sharing a prefix already sees the first one's placement. With
active-active replicas (`epp.replicas`) each local route also goes to `route_listeners`, and
`learn` takes the routes other replicas made, so every replica's index sees every decision."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from epp.datalayer import DataProducer, EndpointObserver
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, register
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.prefix import (
    PREFIX_MATCH,
    PrefixMatch,
    model_seed,
    new_prefix_index,
    prompt_bytes,
)
from epp.scheduling.prefix.hashing import block_bytes, prompt_hasher
from epp.scheduling.prefix.params import PrefixIndexParams
from epp.scheduling.types import SchedulingResult


@register
class ApproxPrefixCacheProducer(Plugin, DataProducer, PreRequest, EndpointObserver):
    type_name = "approx-prefix-cache-producer"
    Params = PrefixIndexParams
    produces = PREFIX_MATCH

    def __init__(self, name: str, params: PrefixIndexParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.index = new_prefix_index()
        self._block_hashes = prompt_hasher()
        self.route_listeners: list[Callable[[Endpoint, Sequence[int]], None]] = []
        self._block_tokens = params.configured_block_tokens()
        self._hit = context.metrics.prefix_index(name, self.type_name, self.index.size)

    def block_tokens(self, candidates: Sequence[Endpoint]) -> int:
        """The engine's own block size (first candidate's `cache_config_info`) when autoTune."""
        if self.params.auto_tune and candidates:
            reported = candidates[0].metrics.cache_block_size
            if reported > 0:
                return reported
        return self._block_tokens

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        block_tokens = self.block_tokens(candidates)
        hashes = self._block_hashes(
            prompt_bytes(request),
            model_seed(request.target_model, request.cache_salt),
            block_bytes(block_tokens),
            self.params.max_blocks(block_tokens),
        )
        matched = self.index.match(hashes) if hashes else {}
        request.attributes[self.name] = PrefixMatch(hashes, matched, block_tokens)
        if hashes:
            best = max(matched.values(), default=0)
            self._hit(best / len(hashes), best * block_bytes(block_tokens))

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        match = request.attributes.get(self.name)
        if not isinstance(match, PrefixMatch) or not match.hashes:
            return
        for endpoint in result.cache_holders():
            self.index.add(endpoint, match.hashes, self._capacity(endpoint))
            for listener in self.route_listeners:
                listener(endpoint, match.hashes)

    def learn(self, endpoint: Endpoint, hashes: Sequence[int]) -> None:
        """A route another replica made: `endpoint` now holds these blocks."""
        self.index.add(endpoint, hashes, self._capacity(endpoint))

    def _capacity(self, endpoint: Endpoint) -> int:
        if self.params.auto_tune and endpoint.metrics.cache_num_blocks > 0:
            return endpoint.metrics.cache_num_blocks
        return self.params.lru_capacity_per_server

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.remove_endpoint(endpoint)
