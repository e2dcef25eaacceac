"""`inflight-load-producer` (llm-d router): counts, per endpoint, the requests routed to it and the
prompt tokens it still has to compute, for token-load-scorer, active-request-scorer,
concurrency-detector, utilization-filter (`active-requests`) and prefix-cache-affinity-filter.

As llm-d's producer (v0.10): every profile's first target is charged one request and the prompt
tokens it does not have cached (prefix match info from `prefixMatchInfoProducerName`'s producer,
or the only one configured; none configured: the whole prompt), plus with
`addEstimatedOutputTokens` an output estimate min(round(prompt x `outputRatio`), the client's
max tokens, `maxEstimatedOutputTokens`). At the first chunk of a streamed (SSE) response the prompt
is computed: the `prefill` profile's charge is freed whole, and without output estimates every
other profile's tokens too. Whatever is left is freed when the response ends, however it ends
(end of stream, error, client disconnect, stream reset): exactly once per request.

When Envoy retried the request on another endpoint than the primary pick (its report of the
endpoint that served, on the response headers), the primary profile's charge moves there, with
the prompt tokens that endpoint has to compute; it is released at once when that endpoint is not
in the pool. llm-d's producer keeps it on the endpoint that failed until the response ends.

The prompt length is the tokenized prompt's when a token-producer is configured, else the prompt
bytes / 4 (what llm-d's default `estimate` tokenizer counts)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from epp.datalayer import DataProducer, EndpointObserver
from epp.datalayer.inflight import INFLIGHT_LOAD, InFlightLoad, LoadCell, RequestLoad
from epp.datalayer.tokenize import TOKENIZED_PROMPT, TokenizedPrompt
from epp.datastore import Endpoint
from epp.framework import (
    DataConsumer,
    Plugin,
    PluginContext,
    PluginParams,
    PluginReference,
    PluginUser,
    register,
)
from epp.metrics.inflight import InFlightSeries
from epp.requestcontrol import (
    RESPONSE_EVENT_STREAM,
    SERVED_ENDPOINT,
    PreRequest,
    ResponseComplete,
    ResponseReceived,
    ResponseStreaming,
)
from epp.requests import InferenceRequest, Usage
from epp.scheduling.prefix import PREFIX_MATCH, PrefixMatch
from epp.scheduling.types import PREFILL_PROFILE, SchedulingResult

DEFAULT_OUTPUT_RATIO = 1.5


class InFlightLoadParams(PluginParams):
    # A consumer's own prefixMatchInfoProducerName (prefix-cache-affinity-filter's) is not this one.
    takes_consumer_parameters = False

    add_estimated_output_tokens: bool = False
    output_ratio: float = Field(default=DEFAULT_OUTPUT_RATIO, ge=0.0)
    # None: no cap (llm-d's unset pointer); 0 caps the estimate at zero, as in llm-d.
    max_estimated_output_tokens: int | None = Field(default=None, ge=0)
    prefix_match_info_producer_name: str = ""
    # With --replica-sync: add the other replicas' counts (llm-d's cross-replica state).
    sync_cross_replica_state: bool = True


@dataclass(slots=True)
class _Charge:
    """What one profile's pick of one request added, until released."""

    cell: LoadCell
    series: tuple[str, ...]
    requests: int
    tokens: int


@dataclass(slots=True)
class _RequestCharges:
    by_profile: dict[str, _Charge]
    first_chunk_seen: bool = False


@register
class InFlightLoadProducer(
    Plugin,
    DataProducer,
    DataConsumer,
    PreRequest,
    ResponseReceived,
    ResponseStreaming,
    ResponseComplete,
    EndpointObserver,
):
    type_name = "inflight-load-producer"
    Params = InFlightLoadParams
    produces = INFLIGHT_LOAD
    consumes = {PREFIX_MATCH: "prefix_match_info_producer_name", TOKENIZED_PROMPT: ""}
    optional_consumes = frozenset((PREFIX_MATCH, TOKENIZED_PROMPT))

    def __init__(self, name: str, params: InFlightLoadParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.load = InFlightLoad()
        self.shares_load = params.sync_cross_replica_state
        self._charges_key = f"{name}/charges"
        # Gauge values by label set (INFLIGHT_LABELS order): [requests, tokens].
        self._series: dict[tuple[str, ...], list[int]] = {}
        context.metrics.inflight_load.sources.append(self._series_values)

    # --- what consumers read ------------------------------------------------------------------

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        request.attributes[self.name] = RequestLoad(self.load, self.request_cost(request))

    def prompt_tokens(self, request: InferenceRequest) -> int:
        tokenized = self.consumed(request, TOKENIZED_PROMPT)
        if isinstance(tokenized, TokenizedPrompt):
            return len(tokenized.token_ids)
        return request.prompt_tokens

    def _prefix_match(self, request: InferenceRequest) -> PrefixMatch | None:
        match = self.consumed(request, PREFIX_MATCH)
        return match if isinstance(match, PrefixMatch) and match.block_size_tokens > 0 else None

    def request_cost(self, request: InferenceRequest) -> Callable[[Endpoint], int]:
        """The tokens this request charges an endpoint: its uncached prompt, plus the output
        estimate (from the whole prompt) when configured."""
        prompt = self.prompt_tokens(request)
        match = self._prefix_match(request)
        extra = 0
        if self.params.add_estimated_output_tokens:
            extra = self.estimate_output_tokens(prompt, request.max_tokens)
        if match is None:
            whole = max(0, prompt) + extra
            return lambda endpoint: whole
        return lambda endpoint: uncached_prompt_tokens(endpoint, prompt, match) + extra

    def estimate_output_tokens(self, prompt: int, client_max: int | None) -> int:
        if prompt <= 0:
            return 0
        estimate = math.floor(prompt * self.params.output_ratio + 0.5)  # Go's math.Round
        for cap in (client_max, self.params.max_estimated_output_tokens):
            if cap is not None and 0 <= cap < estimate:
                estimate = cap
        return estimate

    # --- the request's lifecycle --------------------------------------------------------------

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        prepared = request.attributes.get(self.name)
        cost = prepared.cost if isinstance(prepared, RequestLoad) else self.request_cost(request)
        fairness, priority = request.fairness_id, str(request.priority)
        charges: dict[str, _Charge] = {}
        for profile, picked in result.profile_results.items():
            if picked is None or not picked.targets:
                continue
            endpoint = picked.targets[0]
            charges[profile] = self._charge(endpoint, (self.name, fairness, priority), 1, cost(endpoint))
        if charges:
            request.attributes[self._charges_key] = _RequestCharges(charges)

    def response_received(self, request: InferenceRequest, result: SchedulingResult) -> None:
        """The gateway served the request elsewhere than the primary pick (a retry): the primary
        profile's charge moves to that endpoint, or is released when it is not in the pool."""
        if SERVED_ENDPOINT not in request.attributes:
            return
        served = request.attributes[SERVED_ENDPOINT]
        charges = request.attributes.get(self._charges_key)
        if not isinstance(charges, _RequestCharges):
            return
        charge = charges.by_profile.get(result.primary_profile)
        if charge is None or (isinstance(served, Endpoint) and served.name == charge.series[0]):
            return
        requests, tokens = charge.requests, charge.tokens
        self._release(charge, requests, tokens)
        del charges.by_profile[result.primary_profile]
        if not isinstance(served, Endpoint) or not requests:
            return
        prepared = request.attributes.get(self.name)
        if isinstance(prepared, RequestLoad) and tokens:
            tokens = prepared.cost(served)
        charges.by_profile[result.primary_profile] = self._charge(served, charge.series[2:], requests, tokens)

    def _charge(self, endpoint: Endpoint, labels: tuple[str, ...], requests: int, tokens: int) -> _Charge:
        """Add to `endpoint`'s counters and gauges; `labels`: the series' labels after the endpoint's."""
        cell = self.load.cell(endpoint)
        cell.requests += requests
        cell.tokens += tokens
        series = (endpoint.name, endpoint.spec.namespace, *labels)
        self._add_series(series, requests, tokens)
        return _Charge(cell, series, requests, tokens)

    def response_streaming(self, request: InferenceRequest, result: SchedulingResult, chunk: bytes) -> None:
        """The first chunk of an SSE response: the prompt is computed (llm-d's StartOfStream)."""
        charges = request.attributes.get(self._charges_key)
        if not isinstance(charges, _RequestCharges) or charges.first_chunk_seen:
            return
        charges.first_chunk_seen = True
        if not request.attributes.get(RESPONSE_EVENT_STREAM):
            return  # llm-d reads a non-streamed body whole: its one call is also the last
        for profile, charge in charges.by_profile.items():
            if profile == PREFILL_PROFILE:
                self._release(charge, charge.requests, charge.tokens)
            elif not self.params.add_estimated_output_tokens:
                self._release(charge, 0, charge.tokens)

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        charges = request.attributes.pop(self._charges_key, None)
        if isinstance(charges, _RequestCharges):
            for charge in charges.by_profile.values():
                self._release(charge, charge.requests, charge.tokens)

    def _release(self, charge: _Charge, requests: int, tokens: int) -> None:
        if not requests and not tokens:
            return
        charge.cell.release(requests, tokens)
        charge.requests -= requests
        charge.tokens -= tokens
        self._add_series(charge.series, -requests, -tokens)

    # --- other EPP replicas (epp.replicas.LoadSharer) ----------------------------------------------

    def own_load(self) -> Mapping[str, tuple[int, int]]:
        return self.load.own()

    def set_peer_load(self, load: Mapping[str, tuple[int, int]]) -> None:
        self.load.peer = load

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        """Requests still charged to it release into the dropped cell, not a successor's."""
        self.load.drop(endpoint)

    # --- metrics --------------------------------------------------------------------------------

    def _add_series(self, series: tuple[str, ...], requests: int, tokens: int) -> None:
        values = self._series.get(series)
        if values is None:
            values = self._series[series] = [0, 0]
        values[0] = max(0, values[0] + requests)
        values[1] = max(0, values[1] + tokens)
        if values == [0, 0]:
            del self._series[series]

    def _series_values(self) -> Iterator[InFlightSeries]:
        for labels, (requests, tokens) in list(self._series.items()):
            yield labels, requests, tokens


def uncached_prompt_tokens(endpoint: Endpoint, prompt: int, match: PrefixMatch | None) -> int:
    """The prompt tokens `endpoint` must compute: the indexed blocks it does not hold, plus any
    tail past the indexed part (a partial last block, or past the producer's length cap)."""
    if match is None:
        return max(0, prompt)
    block = match.block_size_tokens
    indexed = match.total_blocks * block
    uncached = max(0, indexed - match.matched_blocks(endpoint) * block)
    return uncached + max(0, prompt - indexed)


class InFlightLoadUser(DataConsumer, PluginUser):
    """A plugin reading an inflight-load-producer's counters outside any request's data (a
    saturation detector, a filter): `inFlightLoadProducerName` names the producer, else the loader
    binds the only one configured or creates the default, as for every consumer of InFlightLoad."""

    consumes = {INFLIGHT_LOAD: "in_flight_load_producer_name"}
    load: InFlightLoad | None = None

    @classmethod
    def referenced_plugins(cls, params: Any) -> list[PluginReference]:
        return []  # the producer is bound (and a wrong name refused) as data, not by reference

    def use_plugins(self, plugins: Mapping[str, Plugin]) -> None:
        producer = plugins.get(self.producers.get(INFLIGHT_LOAD, ""))
        self.load = producer.load if isinstance(producer, InFlightLoadProducer) else None

    def in_flight_requests(self, endpoint: Endpoint) -> int:
        return self.load.requests(endpoint) if self.load is not None else 0

    def in_flight_tokens(self, endpoint: Endpoint) -> int:
        return self.load.tokens(endpoint) if self.load is not None else 0
