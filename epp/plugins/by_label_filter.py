"""`by-label` (deprecated in llm-d for label-selector-filter): keep endpoints whose `label` has
one of `validValues`, and unlabelled ones when `allowsNoLabel`."""

from __future__ import annotations

from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class ByLabelParams(PluginParams):
    label: str = Field(min_length=1)
    valid_values: list[str] = []
    allows_no_label: bool = False


@register
class ByLabelFilter(Plugin, Filter):
    type_name = "by-label"
    Params = ByLabelParams

    def __init__(self, name: str, params: ByLabelParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.label = params.label
        self.valid_values = frozenset(params.valid_values)
        self.allows_no_label = params.allows_no_label

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        kept = []
        for endpoint in candidates:
            value = endpoint.labels.get(self.label)
            if (value in self.valid_values) if value is not None else self.allows_no_label:
                kept.append(endpoint)
        return kept
