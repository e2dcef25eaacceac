"""`prefix-cache-affinity-filter` (GIE / llm-d): keep a request on the endpoints that already hold
most of its prefix, unless they are so loaded that a cold endpoint would answer sooner.

As upstream, with the `prefillThroughput` TTFT source:
1. one candidate or fewer, or `affinityThreshold` <= 0: keep all;
2. with probability `explorationProbability`: keep all (lets other endpoints warm up);
3. sticky = candidates whose prefix score (matched / total blocks of the approximate prefix
   index) is >= `affinityThreshold`; none sticky: keep all;
4. if `maxTTFTPenaltyMs` > 0 and some candidates are not sticky: estimate each endpoint's TTFT as
   its in-flight tokens / `peakPrefillThroughput` x 1000 ms; when the best sticky estimate exceeds
   the best non-sticky one by more than `maxTTFTPenaltyMs`, keep all;
5. otherwise keep only the sticky candidates.

`ttftSource: latencyPredictor` needs the latency-predictor sidecar, which this EPP cannot run: the
config is refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, model_validator

from epp.datalayer.inflight import INFLIGHT_LOAD, RequestLoad
from epp.datastore import Endpoint
from epp.framework import DataConsumer, DataKey, Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch


class PrefixCacheAffinityParams(PluginParams):
    affinity_threshold: float = Field(default=0.80, le=1.0)
    exploration_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    max_ttft_penalty_ms: float = Field(default=18000.0, ge=0.0, alias="maxTTFTPenaltyMs")
    ttft_source: Literal["prefillThroughput", "latencyPredictor"] = "prefillThroughput"
    peak_prefill_throughput: float = Field(default=15928.0, ge=0.0)
    prefix_match_info_producer_name: str = ""
    latency_prediction_info_producer_name: str = ""
    in_flight_load_producer_name: str = ""

    @model_validator(mode="after")
    def _usable(self) -> PrefixCacheAffinityParams:
        if self.ttft_source == "latencyPredictor":
            raise ValueError(
                "ttftSource latencyPredictor needs the latency-predictor sidecar "
                "(predicted-latency-producer), which this EPP cannot run; use ttftSource prefillThroughput"
            )
        if self.max_ttft_penalty_ms > 0 and self.peak_prefill_throughput == 0:
            raise ValueError("peakPrefillThroughput must be > 0 when ttftSource is prefillThroughput")
        return self


@register
class PrefixCacheAffinityFilter(Plugin, Filter, DataConsumer):
    type_name = "prefix-cache-affinity-filter"
    Params = PrefixCacheAffinityParams
    consumes = {
        PREFIX_MATCH: "prefix_match_info_producer_name",
        INFLIGHT_LOAD: "in_flight_load_producer_name",
    }

    @classmethod
    def consumed_keys(cls, params: PrefixCacheAffinityParams) -> Mapping[DataKey, str]:
        """As llm-d: the in-flight load only gates stickiness with a TTFT penalty set."""
        if params.max_ttft_penalty_ms > 0:
            return cls.consumes
        return {PREFIX_MATCH: cls.consumes[PREFIX_MATCH]}

    def __init__(self, name: str, params: PrefixCacheAffinityParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self._rng = context.rng

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        if len(candidates) <= 1 or p.affinity_threshold <= 0:
            return candidates
        if self._rng.random() < p.exploration_probability:
            return candidates
        match = self.consumed(request, PREFIX_MATCH)
        sticky = [e for e in candidates if _score(match, e) >= p.affinity_threshold]
        if not sticky:
            return candidates
        if p.max_ttft_penalty_ms > 0 and len(sticky) < len(candidates):
            load = self.consumed(request, INFLIGHT_LOAD)
            kept = {id(e) for e in sticky}
            others = [e for e in candidates if id(e) not in kept]
            if self._best_ttft(load, sticky) - self._best_ttft(load, others) > p.max_ttft_penalty_ms:
                return candidates
        return sticky

    def _best_ttft(self, load: object, endpoints: list[Endpoint]) -> float:
        tokens = (load.tokens(e) if isinstance(load, RequestLoad) else 0 for e in endpoints)
        return min(tokens) / self.params.peak_prefill_throughput * 1000.0


def _score(match: object, endpoint: Endpoint) -> float:
    if not isinstance(match, PrefixMatch) or match.total_blocks == 0:
        return 0.0
    return match.matched_blocks(endpoint) / match.total_blocks
