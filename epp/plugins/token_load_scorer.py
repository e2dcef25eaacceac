"""`token-load-scorer`: fewer tokens in flight scores higher, linearly down to 0 at
`queueThresholdTokens`."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from epp.datalayer.inflight import INFLIGHT_LOAD, InFlightLoad
from epp.datastore import Endpoint
from epp.framework import DataConsumer, Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer


class TokenLoadParams(PluginParams):
    queue_threshold_tokens: int = Field(default=4_194_304, gt=0)


@register
class TokenLoadScorer(Plugin, Scorer, DataConsumer):
    type_name = "token-load-scorer"
    Params = TokenLoadParams
    consumes = {INFLIGHT_LOAD: ""}

    def __init__(self, name: str, params: TokenLoadParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.threshold = params.queue_threshold_tokens

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        load = self.consumed(request, INFLIGHT_LOAD)
        if not isinstance(load, InFlightLoad):
            return [0.0] * len(candidates)
        threshold = self.threshold
        return [1.0 - min(max(load.tokens(e), 0), threshold) / threshold for e in candidates]
