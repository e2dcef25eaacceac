"""`header-label-affinity-scorer` (llm-d): 1 for endpoints whose label `labelKey` equals the value of
the request header `headerName` (matched lower-cased), 0 for the others and for every endpoint
when the header is absent or empty. Both parameters are required."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Scorer


class HeaderLabelAffinityParams(PluginParams):
    header_name: str = Field(min_length=1)
    label_key: str = Field(min_length=1)


@register
class HeaderLabelAffinityScorer(Plugin, Scorer):
    type_name = "header-label-affinity-scorer"
    Params = HeaderLabelAffinityParams

    def __init__(self, name: str, params: HeaderLabelAffinityParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.header = params.header_name.lower()
        self.label = params.label_key

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        wanted = request.headers.get(self.header, "")
        if not wanted:
            return [0.0] * len(candidates)
        return [1.0 if e.spec.labels.get(self.label) == wanted else 0.0 for e in candidates]
