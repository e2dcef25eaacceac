"""`endpoint-attribute-scorer` (llm-d): score endpoints linearly by a scalar attribute, e.g. a GPU
or engine metric kept by core-metrics-extractor's `customMetrics`.

Parameters, as llm-d's: `attributeKey` (required), `producer` (optional), `algorithm`:
`type` `linear_lower_is_better` | `linear_higher_is_better`, and at most one `normalization`:
`fixedRange: {min, max}` (min < max; score = (value - min) / (max - min) clamped to [0, 1]) or
`adaptiveRange: {}` (the default: min and max over the candidates that have the attribute, all
equal → 1.0). Lower-is-better scores 1 - that. Endpoints without the attribute score 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, register
from epp.params.strict import StrictModel
from epp.requests import InferenceRequest
from epp.scheduling import endpoint_attributes
from epp.scheduling.framework import Scorer


class FixedRange(StrictModel):
    min: float = 0.0
    max: float = 0.0


class AdaptiveRange(StrictModel):
    pass


class Normalization(StrictModel):
    fixed_range: FixedRange | None = None
    adaptive_range: AdaptiveRange | None = None

    @model_validator(mode="after")
    def _one(self) -> Normalization:
        if self.fixed_range is not None and self.adaptive_range is not None:
            raise ValueError("at most one normalization strategy, got both fixedRange and adaptiveRange")
        fixed = self.fixed_range
        if fixed is not None and fixed.min >= fixed.max:
            raise ValueError(
                f"normalization.fixedRange requires min < max, got min {fixed.min}, max {fixed.max}"
            )
        return self


class ScorerAlgorithm(StrictModel):
    type: Literal["linear_lower_is_better", "linear_higher_is_better"]
    normalization: Normalization = Normalization()


class EndpointAttributeScorerParams(endpoint_attributes.AttributeParams):
    attribute_key: str = Field(min_length=1)
    algorithm: ScorerAlgorithm

    @model_validator(mode="after")
    def _resolvable(self) -> EndpointAttributeScorerParams:
        endpoint_attributes.check_attribute("endpoint attribute scorer", self.attribute_key, self.producer)
        return self


@register
class EndpointAttributeScorer(Plugin, Scorer):
    type_name = "endpoint-attribute-scorer"
    Params = EndpointAttributeScorerParams

    def __init__(self, name: str, params: EndpointAttributeScorerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.key, self.producer = params.attribute_key, params.producer
        self.lower_is_better = params.algorithm.type == "linear_lower_is_better"
        self.fixed = params.algorithm.normalization.fixed_range

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        values = [endpoint_attributes.read(e, self.key, self.producer) for e in candidates]
        present = [v for v in values if v is not None]
        if self.fixed is not None:
            low, high = self.fixed.min, self.fixed.max
        elif present:
            low, high = min(present), max(present)
        scores = []
        for value in values:
            if value is None:
                scores.append(0.0)
                continue
            if self.fixed is None and high == low:
                scores.append(1.0)
                continue
            normalized = min(1.0, max(0.0, (value - low) / (high - low)))
            scores.append(1.0 - normalized if self.lower_is_better else normalized)
        return scores
