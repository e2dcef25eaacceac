"""`precise-prefix-cache-scorer` (deprecated in llm-d): `precise-prefix-cache-producer` and
`prefix-cache-scorer` in one plugin, with the producer's parameters. It scores the share of the
prompt's blocks each candidate holds from the first (llm-d's current wrapper; its v0.3 version
min-max normalised raw counts instead). It is the producer with a score added, so it also produces
`PrefixCacheMatchInfo` (`no-hit-lru-scorer` and P/D deciders can read what it found) and indexes
speculatively after routing when `speculativeIndexing` is on, as the producer does."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import PluginContext, register
from epp.plugins.precise_prefix_cache_producer import PrecisePrefixCacheProducer, PreciseProducerParams
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.prefix import PrefixMatch

log = logging.getLogger(__name__)


@register
class PrecisePrefixCacheScorer(PrecisePrefixCacheProducer, Scorer):
    type_name = "precise-prefix-cache-scorer"

    def __init__(self, name: str, params: PreciseProducerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        log.warning(
            "%s: precise-prefix-cache-scorer is deprecated; configure precise-prefix-cache-producer and "
            "prefix-cache-scorer (prefixMatchInfoProducerName) instead",
            name,
        )

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        match = request.attributes.get(self.name)
        if not isinstance(match, PrefixMatch) or not match.hashes:
            return [0.0] * len(candidates)
        total = match.total_blocks
        return [match.matched_blocks(e) / total for e in candidates]
