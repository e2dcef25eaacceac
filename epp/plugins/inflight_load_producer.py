"""`inflight-load-producer`: publishes each endpoint's in-flight requests and tokens for
active-request-scorer and token-load-scorer; with `addEstimatedOutputTokens` it also charges every
routed request an output estimate (prompt tokens x `outputRatio`) until its response ends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from epp.datalayer import DataProducer, EndpointObserver
from epp.datalayer.inflight import INFLIGHT_LOAD, InFlightLoad
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, PluginReference, PluginUser, register
from epp.requestcontrol import PreRequest, ResponseComplete
from epp.requests import InferenceRequest, Usage
from epp.scheduling.types import SchedulingResult


class InFlightLoadParams(PluginParams):
    add_estimated_output_tokens: bool = False
    output_ratio: float = Field(default=1.5, ge=0.0)
    max_estimated_output_tokens: int = Field(default=0, ge=0, description="0 = no cap")


@register
class InFlightLoadProducer(Plugin, DataProducer, PreRequest, ResponseComplete, EndpointObserver):
    type_name = "inflight-load-producer"
    Params = InFlightLoadParams
    produces = INFLIGHT_LOAD

    def __init__(self, name: str, params: InFlightLoadParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.load = InFlightLoad()
        self._charge_key = f"{name}/charged"

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        request.attributes[self.name] = self.load

    def estimate_output_tokens(self, request: InferenceRequest) -> int:
        estimate = round(request.prompt_tokens * self.params.output_ratio)
        cap = self.params.max_estimated_output_tokens
        return min(estimate, cap) if cap > 0 else estimate

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        if not self.params.add_estimated_output_tokens:
            return
        estimate = self.estimate_output_tokens(request)
        names = [e.name for e in result.first_targets()]
        pending = self.load.estimated_output_tokens
        for name in names:
            pending[name] = pending.get(name, 0) + estimate
        request.attributes[self._charge_key] = (estimate, names)

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        charge = request.attributes.pop(self._charge_key, None)
        if charge is None:
            return
        estimate, names = charge
        pending = self.load.estimated_output_tokens
        for name in names:
            if name in pending:
                left = pending[name] - estimate
                if left > 0:
                    pending[name] = left
                else:
                    del pending[name]

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.load.estimated_output_tokens.pop(endpoint.name, None)


class InFlightLoadUser(PluginUser):
    """A plugin whose `inFlightLoadProducerName` parameter names the inflight-load-producer whose
    load it reads (llm-d's concurrency-detector and utilization-filter); "" is the director's own
    counts, which every producer shares for requests and adds its output estimates to for tokens."""

    load_producer_name = ""  # the parameter, set by the plugin
    load: InFlightLoad | None = None

    @classmethod
    def referenced_plugins(cls, params: Any) -> list[PluginReference]:
        name = params.in_flight_load_producer_name
        role = "an inflight-load-producer"
        return [PluginReference("inFlightLoadProducerName", name, InFlightLoadProducer, role)] if name else []

    def use_plugins(self, plugins: Mapping[str, Plugin]) -> None:
        producer = plugins.get(self.load_producer_name)
        self.load = producer.load if isinstance(producer, InFlightLoadProducer) else None

    def in_flight_tokens(self, endpoint: Endpoint) -> int:
        return self.load.tokens(endpoint) if self.load is not None else endpoint.inflight_tokens
