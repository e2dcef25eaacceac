"""`round-robin-picker`: candidates in turn, ignoring scores, the way Envoy's ROUND_ROBIN load
balancer cycles through equally weighted hosts. It stands in for "Envoy without an EPP" wherever
there is no Envoy (the virtual-time benchmark); like Envoy it starts at a random position."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import PluginContext, register
from epp.requests import InferenceRequest
from epp.scheduling.pickers import CountedPicker, PickerParams


@register
class RoundRobinPicker(CountedPicker):
    type_name = "round-robin-picker"

    def __init__(self, name: str, params: PickerParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self._turn = self.rng.randrange(1 << 16)

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        count = len(candidates)
        first = self._turn % count
        self._turn += 1
        return [candidates[(first + i) % count] for i in range(min(self.count, count))]
