"""`label-selector-filter`: keep endpoints matching a Kubernetes label selector (matchLabels and
matchExpressions with In / NotIn / Exists / DoesNotExist, ANDed; an empty selector keeps all)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import model_validator

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.params.labelselector import LabelSelector, Requirement
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class LabelRequirement(PluginParams):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty values list")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def requirement(self) -> Requirement:
        return Requirement(self.key, self.operator, frozenset(self.values))


class LabelSelectorParams(PluginParams):
    match_labels: dict[str, str] = {}
    match_expressions: list[LabelRequirement] = []


@register
class LabelSelectorFilter(Plugin, Filter):
    type_name = "label-selector-filter"
    aliases = ("by-label-selector",)
    Params = LabelSelectorParams

    def __init__(self, name: str, params: LabelSelectorParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.match_labels = tuple(params.match_labels.items())
        self.selector = LabelSelector(tuple(r.requirement() for r in params.match_expressions))

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and self.selector.matches(labels)

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        return [e for e in candidates if self.selects(e.labels)]
