"""`token-load-scorer` (llm-d): fewer tokens in flight scores higher, linearly down to 0 at
`queueThresholdTokens`. An endpoint's tokens are its inflight-load-producer count plus what this
request would add there (its uncached prompt), as llm-d adds UncachedRequestTokens."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datalayer.inflight import INFLIGHT_LOAD, RequestLoad
from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer

DEFAULT_QUEUE_THRESHOLD_TOKENS = 4_194_304


class TokenLoadParams(PluginParams):
    # As llm-d's: 0 or less means the default.
    queue_threshold_tokens: int = DEFAULT_QUEUE_THRESHOLD_TOKENS
    in_flight_load_producer_name: str = ""  # which inflight-load-producer (default: the default one)


@register
class TokenLoadScorer(Plugin, Scorer, DataConsumer):
    type_name = "token-load-scorer"
    Params = TokenLoadParams
    consumes = {INFLIGHT_LOAD: "in_flight_load_producer_name"}

    def __init__(self, name: str, params: TokenLoadParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.threshold = params.queue_threshold_tokens
        if self.threshold <= 0:
            self.threshold = DEFAULT_QUEUE_THRESHOLD_TOKENS

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        load = self.consumed(request, INFLIGHT_LOAD)
        if not isinstance(load, RequestLoad):
            return [0.0] * len(candidates)
        threshold = self.threshold
        return [
            1.0 - min(max(load.tokens(e) + load.request_tokens(e), 0), threshold) / threshold
            for e in candidates
        ]
