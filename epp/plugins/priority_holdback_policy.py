"""`priority-holdback-policy` (llm-d's usage-limit policy): each priority band gets its own fixed
saturation ceiling, from `maxCeiling` for the highest band down to `minCeiling` for the lowest, so
lower priorities are held back first as the pool fills.

`domain: rank` (default) spaces the ceilings evenly by rank: band i of N gets
maxCeiling - i x (maxCeiling - minCeiling) / (N - 1). `domain: value` places them by priority
value: minCeiling + (p - pMin) / (pMax - pMin) x (maxCeiling - minCeiling), all bands maxCeiling
when every priority is equal. A single band gets maxCeiling. `shape: linear` is the only shape.
`minCeiling` is required (in [0, 1)); `maxCeiling` defaults to 1.0 (in (0, 1]) and must exceed it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from epp.flowcontrol.queues import UsageLimitPolicy
from epp.framework import Plugin, PluginContext, PluginParams, register


class PriorityHoldbackParams(PluginParams):
    shape: Literal["linear"] = "linear"
    domain: Literal["rank", "value"] = "rank"
    min_ceiling: float = Field(ge=0.0, lt=1.0, allow_inf_nan=False)
    max_ceiling: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> PriorityHoldbackParams:
        if self.min_ceiling >= self.max_ceiling:
            raise ValueError(
                f"minCeiling ({self.min_ceiling:g}) must be strictly less than "
                f"maxCeiling ({self.max_ceiling:g})"
            )
        return self


@register
class PriorityHoldbackPolicy(Plugin, UsageLimitPolicy):
    type_name = "priority-holdback-policy"
    Params = PriorityHoldbackParams

    def __init__(self, name: str, params: PriorityHoldbackParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.low = params.min_ceiling
        self.high = params.max_ceiling
        self.by_value = params.domain == "value"

    def ceilings(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        if len(priorities) <= 1:
            return [self.high] * len(priorities)
        spread = self.high - self.low
        if not self.by_value:
            steps = len(priorities) - 1
            return [self.high - rank * spread / steps for rank in range(len(priorities))]
        lowest, highest = priorities[-1], priorities[0]
        if highest == lowest:
            return [self.high] * len(priorities)
        return [self.low + (p - lowest) / (highest - lowest) * spread for p in priorities]
