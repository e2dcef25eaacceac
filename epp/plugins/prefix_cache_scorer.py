"""`prefix-cache-scorer`: the share of the prompt's blocks each candidate probably has cached,
optionally blended (llm-d's `matchLengthWeight`) with the absolute cached length, so a long match
is not outranked by a short prompt's full match. llm-d v0.2's `mode: cache_tracking` builds a
`precise-prefix-cache-scorer` instead (`from_cache_tracking`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
from pydantic import Field

from epp.datastore import Endpoint
from epp.datastore.columns import positions
from epp.framework import DataConsumer, ParameterUpgrade, Plugin, PluginContext, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.prefix.params import PrefixIndexParams
from epp.scheduling.prefix.precise import from_cache_tracking


class PrefixCacheScorerParams(PrefixIndexParams):
    """Index parameters are accepted here too (GIE <= v1.4 put them on the scorer); they configure
    the producer that is created for this scorer when the config defines none."""

    match_length_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    match_length_scale_tokens: int = Field(default=8192, gt=0)
    prefix_match_info_producer_name: str = ""

    @classmethod
    def upgrade(cls, raw: Mapping[str, Any], type_name: str = "") -> ParameterUpgrade:
        if raw.get("mode") == "cache_tracking":
            return from_cache_tracking(raw)
        return super().upgrade(raw, type_name)


@register
class PrefixCacheScorer(Plugin, Scorer, DataConsumer):
    type_name = "prefix-cache-scorer"
    Params = PrefixCacheScorerParams
    consumes = {PREFIX_MATCH: "prefix_match_info_producer_name"}

    def __init__(self, name: str, params: PrefixCacheScorerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.length_weight = params.match_length_weight
        self.scale_tokens = params.match_length_scale_tokens

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        match = self.consumed(request, PREFIX_MATCH)
        if not isinstance(match, PrefixMatch) or not match.hashes:
            return [0.0] * len(candidates)
        ratios = list(map(self._ratio_of(match).get, candidates, repeat(0.0)))
        if self.length_weight == 0.0:
            return ratios
        matched = match.matched
        scale = match.block_size_tokens / self.scale_tokens
        weight = self.length_weight
        return [
            weight * min(1.0, matched.get(e, 0) * scale) ** 2 + (1.0 - weight) * ratio
            for e, ratio in zip(candidates, ratios, strict=True)
        ]

    def score_array(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> np.ndarray:
        match = self.consumed(request, PREFIX_MATCH)
        if self.length_weight != 0.0 or not isinstance(match, PrefixMatch) or not match.hashes:
            return super().score_array(request, candidates)
        # zeros, then only the few endpoints holding blocks, at their candidate positions
        where = positions(candidates)
        if len(where) != len(candidates):  # an endpoint listed twice: per candidate
            ratios = map(self._ratio_of(match).get, candidates, repeat(0.0))
            return np.fromiter(ratios, np.float64, len(candidates))
        scores = np.zeros(len(candidates))
        for endpoint, ratio in self._ratio_of(match).items():
            position = where.get(endpoint)
            if position is not None:
                scores[position] = ratio
        return scores

    @staticmethod
    def _ratio_of(match: PrefixMatch) -> dict[Endpoint, float]:
        """Only the endpoints holding blocks are divided; a lookup gives the rest 0 / total = 0.0."""
        total = match.total_blocks
        return {e: blocks / total for e, blocks in match.matched.items()}
