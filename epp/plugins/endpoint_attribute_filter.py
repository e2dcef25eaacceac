"""`endpoint-attribute-filter` (llm-d): keep the endpoints whose scalar attribute passes a
threshold, e.g. a GPU or engine metric kept by core-metrics-extractor's `customMetrics`.

Parameters, as llm-d's: `attribute` (required), `producer` (optional; an `attribute` containing
`/` needs it), `onMissing` (`Pass` (default) keeps endpoints without the attribute, `Fail` drops
them), `fallbackOnEmpty` (false; true keeps every candidate when none passes), `algorithm`
(`type: threshold` with `threshold: {operator, value}`, operator one of `LessThan`,
`LessThanOrEqual`, `GreaterThan`, `GreaterThanOrEqual`, `Equal`, `NotEqual`)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Literal

from pydantic import Field, model_validator

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, register
from epp.params.strict import StrictModel
from epp.requests import InferenceRequest
from epp.scheduling import endpoint_attributes
from epp.scheduling.framework import Filter

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "LessThan": operator.lt,
    "LessThanOrEqual": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanOrEqual": operator.ge,
    "Equal": operator.eq,
    "NotEqual": operator.ne,
}


class Threshold(StrictModel):
    operator: Literal["LessThan", "LessThanOrEqual", "GreaterThan", "GreaterThanOrEqual", "Equal", "NotEqual"]
    value: float = 0.0


class ThresholdAlgorithm(StrictModel):
    type: Literal["threshold"]
    threshold: Threshold | None = None

    @model_validator(mode="after")
    def _needs_threshold(self) -> ThresholdAlgorithm:
        if self.threshold is None:
            raise ValueError("algorithm.threshold is required when algorithm.type is threshold")
        return self


class EndpointAttributeFilterParams(endpoint_attributes.AttributeParams):
    attribute: str = Field(min_length=1)
    on_missing: Literal["Pass", "Fail"] = "Pass"
    fallback_on_empty: bool = False
    algorithm: ThresholdAlgorithm

    @model_validator(mode="after")
    def _resolvable(self) -> EndpointAttributeFilterParams:
        endpoint_attributes.check_attribute("endpoint attribute filter", self.attribute, self.producer)
        return self


@register
class EndpointAttributeFilter(Plugin, Filter):
    type_name = "endpoint-attribute-filter"
    Params = EndpointAttributeFilterParams

    def __init__(self, name: str, params: EndpointAttributeFilterParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        assert params.algorithm.threshold is not None
        self.compare = OPERATORS[params.algorithm.threshold.operator]
        self.value = params.algorithm.threshold.value

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        kept = []
        for endpoint in candidates:
            value = endpoint_attributes.read(endpoint, p.attribute, p.producer)
            if value is None:
                if p.on_missing == "Pass":
                    kept.append(endpoint)
            elif self.compare(value, self.value):
                kept.append(endpoint)
        if not kept and p.fallback_on_empty:
            return candidates
        return kept
